"""Evaluation data that tensorllm fetches and caches (BIG-bench task files from PyPI)."""

import json

from tensorllm.data.bigbench import MEMBERS, FetchResult, bigbench_file, fetch_bigbench

TEXT_MEMBERS = ("paragraphs", "wiki_squad_dev", "nyt")  # in this order


def default_calibration_text() -> str:
    """The offline default English text for calibration, fine-tuning and perplexity: BIG-bench's
    squad_shifts paragraphs in file order, each once, separated by blank lines — first the 1,581
    new-Wikipedia paragraphs (~260k SmolLM2 tokens), then SQuAD v1.1 dev's 2,067 Wikipedia
    paragraphs (~345k), then 2,017 New York Times paragraphs (~356k). A method reads from the start,
    so calibration and held-out text of a short run are the new-Wikipedia paragraphs alone."""
    seen: dict[str, None] = {}
    for member in TEXT_MEMBERS:
        doc = json.loads(bigbench_file(member).read_text(encoding="utf-8"))
        for article in doc["data"]:
            for para in article["paragraphs"]:
                seen.setdefault(para["context"].strip(), None)
    return "\n\n".join(seen)


__all__ = ["MEMBERS", "FetchResult", "bigbench_file", "default_calibration_text", "fetch_bigbench"]
