"""Evaluation data that tensorllm fetches and caches (BIG-bench task files from PyPI)."""

import json

from tensorllm.data.bigbench import MEMBERS, FetchResult, bigbench_file, fetch_bigbench


def default_calibration_text() -> str:
    """English Wikipedia paragraphs (BIG-bench squad_shifts new_wiki, 1,581 paragraphs), in file order,
    each once, separated by blank lines: the offline default text for calibration and perplexity."""
    doc = json.loads(bigbench_file("paragraphs").read_text(encoding="utf-8"))
    seen: dict[str, None] = {}
    for article in doc["data"]:
        for para in article["paragraphs"]:
            seen.setdefault(para["context"].strip(), None)
    return "\n\n".join(seen)


__all__ = ["MEMBERS", "FetchResult", "bigbench_file", "default_calibration_text", "fetch_bigbench"]
