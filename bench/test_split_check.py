"""CPU check of a search winner on the test split (used when the GPU search could not finish).

    python bench/test_split_check.py --layer 16 --ranks 288,48,4 \\
        --json bench/results/test_split_check/test_check_L16_full.json
    python bench/test_split_check.py --layer 16 --ranks 288,48,4 --limit 3000 --json ...   # a prefix
    python bench/test_split_check.py --layer 5 --ranks auto \\
        --baseline-from bench/results/test_split_check/test_check_L16_full.json ...

Evaluates SmolLM2 (float32, CPU) and the same model with the Tucker of one layer on the same
WikidataQA test items, keeps each item's correctness, and reports the paired comparison: items
only the baseline gets right (c) and only the Tucker model gets right (b), McNemar's exact
two-sided p-value (binomial on b of b + c at 1/2) and a seeded paired-bootstrap 95% interval of
the accuracy difference.
"""

import argparse
import json
import math
import random
import time

import tensorllm
from tensorllm.eval import evaluate


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: P(|X - n/2| >= |b - n/2|), X ~ Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(
    base: list[bool], new: list[bool], reps: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% interval (points) of mean(new) - mean(base), resampling items with replacement."""
    rng = random.Random(seed)
    n = len(base)
    diffs = [int(x) - int(y) for x, y in zip(new, base)]
    stats = sorted(100.0 * sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return stats[int(0.025 * reps)], stats[int(0.975 * reps) - 1]


def run(loaded, limit, batch_size):
    res = evaluate(
        loaded.model,
        loaded.tokenizer,
        "wikidata_qa",
        split="test",
        limit=limit,
        batch_size=batch_size,
        keep_examples=True,
        progress=True,
    ).to_dict()
    correct = [bool(e["correct"]) for e in res.pop("examples")]
    return res, correct


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--ranks", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--baseline-from",
        default=None,
        help="reuse the baseline (numbers and per-item correctness) of an earlier run on the same items",
    )
    a = p.parse_args()
    loaded = tensorllm.load_model("smollm2-135m", device="cpu")
    t0 = time.time()
    if a.baseline_from:
        old = json.load(open(a.baseline_from))
        if old["limit"] != a.limit:
            raise SystemExit(f"{a.baseline_from} was run with --limit {old['limit']}, not {a.limit}")
        base, base_ok = old["baseline"], [c == "1" for c in old["correct"]["baseline"]]
    else:
        base, base_ok = run(loaded, a.limit, a.batch_size)
    print("baseline", base["accuracy"], base["loss"], flush=True)
    ranks = a.ranks if a.ranks == "auto" else [int(x) for x in a.ranks.split(",")]
    _, report = tensorllm.compress(
        loaded,
        {"device": "cpu", "steps": [{"method": "tucker", "layers": [a.layer], "ranks": ranks}]},
        progress=False,
    )
    resolved = report.steps[0]["layers"][0]["ranks"]
    new, new_ok = run(loaded, a.limit, a.batch_size)
    print(f"tucker L{a.layer} {ranks}", new["accuracy"], new["loss"], flush=True)
    b = sum(n and not o for o, n in zip(base_ok, new_ok))  # only the Tucker model right
    c = sum(o and not n for o, n in zip(base_ok, new_ok))  # only the baseline right
    lo, hi = paired_bootstrap(base_ok, new_ok)
    paired = {
        "only_tucker_right": b,
        "only_baseline_right": c,
        "mcnemar_exact_p": mcnemar_exact(b, c),
        "diff_points": new["accuracy"] - base["accuracy"],
        "bootstrap95_points": [lo, hi],
    }
    print(json.dumps(paired), flush=True)
    keep = ("n", "accuracy", "loss", "answer_mode", "source", "seconds")
    out = {
        "layer": a.layer,
        "ranks": ranks,
        "resolved_ranks": resolved,
        "limit": a.limit,
        "baseline_from": a.baseline_from,
        "device": "cpu float32",
        "seconds": time.time() - t0,
        "versions": tensorllm.report.versions(),
        "baseline": {k: base[k] for k in keep},
        "tucker": {k: new[k] for k in keep},
        "paired": paired,
        "correct": {
            "baseline": "".join("01"[x] for x in base_ok),
            "tucker": "".join("01"[x] for x in new_ok),
        },
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
