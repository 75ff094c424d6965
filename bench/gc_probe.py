"""Who freezes the garbage collector's heap, and what a full collection costs, in this process.

    python bench/gc_probe.py [--device cuda] [--ballast N] [--json OUT]

Prints `gc.get_freeze_count()` (objects in the permanent generation) and the tracked objects after
each import of the stack (torch, transformers, tensorllm's evaluation), after CUDA starts and after
one CUDA-graph capture (a GPU), then times one full collection outside and inside
`tensorllm.base.heap.frozen_heap()` (on the heap plus N one-item lists, default 1 M), with whether
that block froze the heap itself. Python 3.12 starts with objects of its own frozen (375 in 3.12.1
and 3.12.3), which `frozen_heap` takes as its baseline; a count above the one at tensorllm's import
means someone froze the heap, and then `frozen_heap` (which leaves a caller's freeze alone) does
nothing in this process. Last, the cost of the block itself (entry and exit, nothing inside) on that
heap: the median of 20.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time


def state(label: str, rows: list) -> None:
    rows.append({"after": label, "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())})
    print(json.dumps(rows[-1]))


def full_collection_seconds() -> float:
    t0 = time.perf_counter()
    gc.collect()
    return round(time.perf_counter() - t0, 4)


def block_seconds(heap) -> float:
    """Median seconds of an empty `frozen_heap()` block: what every evaluation pays for it."""
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        with heap.frozen_heap():
            pass
        times.append(time.perf_counter() - t0)
    return round(sorted(times)[len(times) // 2], 6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--ballast", type=int, default=1_000_000, help="lists standing in for a model's heap")
    args = ap.parse_args()
    rows: list = []
    state("start", rows)
    import torch

    state("import torch", rows)
    import transformers  # noqa: F401

    state("import transformers", rows)
    from tensorllm.base import heap
    from tensorllm.eval import evaluate  # noqa: F401

    state("import tensorllm.eval", rows)
    if args.device == "cuda":
        x = torch.zeros(8, device="cuda")
        state("cuda start", rows)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = x * 2
        graph.replay()
        torch.cuda.synchronize()
        state("a CUDA-graph capture", rows)
        del y
    ballast = [[i] for i in range(args.ballast)]  # a heap of a loaded model's order of tracked objects
    state(f"{args.ballast} lists made", rows)
    plain = full_collection_seconds()
    with heap.frozen_heap():
        owned = heap.frozen_by_block()
        inside = full_collection_seconds()
    block = block_seconds(heap)
    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "states": rows,
        "full_collection_seconds": plain,
        "inside_frozen_heap_seconds": inside,
        "frozen_heap_froze_it_itself": owned,
        "empty_block_seconds": block,
        "frozen_after_the_block": gc.get_freeze_count(),
    }
    del ballast
    print(json.dumps({k: v for k, v in out.items() if k != "states"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
