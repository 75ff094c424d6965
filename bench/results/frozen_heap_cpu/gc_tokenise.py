"""The warm tokenise step of full WikidataQA, 8 times in one process, with its garbage-collector
pauses; `freeze` as argument: each run inside gc.freeze() / gc.unfreeze() (what base/heap.py does).
Each run's results are kept alive, as a search keeps its results. Run from the repository root:
`.venv/bin/python bench/results/frozen_heap_cpu/gc_tokenise.py [freeze]`."""

import gc, time, sys
from transformers import AutoTokenizer
from tensorllm.eval import get_task, load_task
from tensorllm.eval.tokens import encode, answer_spans
from tensorllm.models.aliases import alias_path

tok = AutoTokenizer.from_pretrained(alias_path("smollm2-135m"))
items = list(load_task(get_task("wikidata_qa")).examples)
items = (
    [e for e in items if isinstance(e.answer, str)] if items and isinstance(items[0].answer, str) else items
)
print(len(items), gc.get_threshold(), sys.version)
pauses = []
t = {}


def cb(phase, info):
    if phase == "start":
        t["s"] = time.perf_counter()
    else:
        pauses.append((info["generation"], time.perf_counter() - t["s"]))


gc.callbacks.append(cb)
keep = []
FREEZE = len(sys.argv) > 1
for k in range(8):
    pauses.clear()
    t0 = time.perf_counter()
    FREEZE and gc.freeze()
    p = encode(tok, [e.prompt for e in items])
    s = answer_spans(tok, [e.prompt for e in items], [e.answer for e in items])
    dt = time.perf_counter() - t0
    FREEZE and gc.unfreeze()
    keep.append((p, s))  # like a run's results kept alive
    g2 = [d for g, d in pauses if g == 2]
    print(
        f"run {k}: {dt:.3f} s, collections {len(pauses)}, gen2 {len(g2)} taking {sum(g2):.3f} s, all {sum(d for _, d in pauses):.3f} s"
    )
