"""The warm tokenise step of full WikidataQA, 8 times in one process, with its garbage-collector
pauses; `freeze` as argument: each run inside gc.freeze() / gc.unfreeze() (what base/heap.py does).
Each run's results are kept alive, as a search keeps its results. Run from the repository root:
`.venv/bin/python bench/results/frozen_heap_cpu/gc_tokenise.py [freeze]`."""

import gc
import sys
import time

from transformers import AutoTokenizer

from tensorllm.eval import get_task, load_task
from tensorllm.eval.tokens import answer_spans, encode
from tensorllm.models.aliases import alias_path

tok = AutoTokenizer.from_pretrained(alias_path("smollm2-135m"))
items = list(load_task(get_task("wikidata_qa")).examples)
prompts, answers = [e.prompt for e in items], [e.answer for e in items]
print(len(items), gc.get_threshold(), sys.version)
freeze = len(sys.argv) > 1
pauses: list[tuple[int, float]] = []
started = {}


def on_collection(phase: str, info: dict) -> None:
    if phase == "start":
        started["t"] = time.perf_counter()
    else:
        pauses.append((info["generation"], time.perf_counter() - started["t"]))


gc.callbacks.append(on_collection)
keep = []
for k in range(8):
    pauses.clear()
    t0 = time.perf_counter()
    if freeze:
        gc.freeze()
    ids, spans = encode(tok, prompts), answer_spans(tok, prompts, answers)
    seconds = time.perf_counter() - t0
    if freeze:
        gc.unfreeze()
    keep.append((ids, spans))
    full = [d for g, d in pauses if g == 2]
    print(
        f"run {k}: {seconds:.3f} s, collections {len(pauses)}, gen2 {len(full)} taking {sum(full):.3f} s, "
        f"all {sum(d for _, d in pauses):.3f} s"
    )
