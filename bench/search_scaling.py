"""Multi-GPU scaling of `tensorllm search`: the same search into fresh stores with 1, 2, ... processes.

    python bench/search_scaling.py --root $S/scaling --gpus 1,2 --out $OUT/scaling.json -- \\
        smollm2-135m --task wikidata_qa --method tucker --layers all --ranks "288,48,4;64,32,1;auto" \\
        --batch-size 1024 --device cuda
    python bench/search_scaling.py --root /tmp/sc --gpus 1,2 -- MODEL ... --device cpu --threads 1   # gloo

Everything after `--` is passed to `tensorllm search` as it is, plus `--gpus N --store ROOT/gN`.
Each store must not exist yet (a resumed store would time only the missing work). First, untimed,
the same search with 16 items per split on the most processes, starting evaluations
for 45 s (ROOT/warmup): it warms the disk
cache and the GPUs, so the first timed count does not pay for a cold machine alone (`--no-warmup`
skips it). Reports, per process count: wall-clock seconds of the whole command (spawn, loads, every
evaluation, report), the set-up times rank 0 logged, the seconds of evaluation on the busiest rank
and each rank's evaluation time by phase (tokenise, generate, judge, loss),
the median seconds of one validation evaluation, the speed-up over the first count, and whether
every (configuration, split) result and the selected winner equal those of the first store.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import emit_json  # bench/common.py


def _store_summary(store: Path) -> dict:
    from tensorllm.search import Store

    numbers, val_seconds, per_rank, per_rank_count, per_rank_phases = {}, [], {}, {}, {}
    for line in Store(store).lines():
        numbers[f"{line['key']}/{line['split']}"] = (line["accuracy"], line["loss"], line["n"])
        per_rank[line["rank"]] = per_rank.get(line["rank"], 0.0) + line["seconds"]
        per_rank_count[line["rank"]] = per_rank_count.get(line["rank"], 0) + 1
        phases = per_rank_phases.setdefault(line["rank"], {})
        for name, sec in (line["eval"].get("seconds_by_phase") or {}).items():
            phases[name] = round(phases.get(name, 0.0) + sec, 2)
        if line["split"] == "val":
            val_seconds.append(line["seconds"])
    report = json.loads((store / "report.json").read_text())
    winner = (report.get("roles") or {}).get("winner") or {}
    return {
        "numbers": numbers,
        "status": report.get("status"),
        "winner": winner.get("key"),
        "winner_describe": winner.get("describe"),
        "median_val_seconds": statistics.median(val_seconds),
        "busiest_rank_seconds": round(max(per_rank.values()), 2),
        "evaluations_per_rank": dict(sorted(per_rank_count.items())),
        "setup_seconds": report["run"].get("setup_seconds"),
        "eval_seconds_by_phase_per_rank": per_rank_phases,
    }


def main() -> None:
    argv = sys.argv[1:]
    search_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="the stores go to ROOT/g1, ROOT/g2, ...")
    ap.add_argument("--gpus", default="1,2", help="process counts, the first is the reference")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up search")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if not search_args:
        ap.error("give the search after `--` (MODEL --task ... --device ...)")
    counts = [int(n) for n in args.gpus.split(",")]
    stores = {n: args.root / f"g{n}" for n in counts}
    taken = [str(s) for s in [*stores.values(), args.root / "warmup"] if s.exists()]
    if taken:
        ap.error(f"stores exist already (the timing needs fresh ones): {', '.join(taken)}")
    env = dict(os.environ, NCCL_NVLS_ENABLE="0")  # NVLink multicast stays off
    if not args.no_warmup:  # the last --limit-* / --store / --gpus given wins
        cmd = [
            sys.executable,
            "-m",
            "tensorllm.cli",
            "search",
            *search_args,
            "--limit-val",
            "16",
            "--limit-test",
            "16",
            "--time-budget",
            "45",
            "--gpus",
            str(max(counts)),
            "--store",
            str(args.root / "warmup"),
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        print(f"warm-up: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    rows = []
    for n in counts:
        cmd = [
            sys.executable,
            "-m",
            "tensorllm.cli",
            "search",
            *search_args,
            "--gpus",
            str(n),
            "--store",
            str(stores[n]),
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        rows.append(
            {"processes": n, "wall_seconds": round(time.perf_counter() - t0, 2), **_store_summary(stores[n])}
        )
        print(f"{n} process(es): {rows[-1]['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
    ref = rows[0]
    for r in rows:
        r["speedup"] = round(ref["wall_seconds"] / r["wall_seconds"], 3)
        r["identical_to_first"] = r["numbers"] == ref["numbers"] and r["winner"] == ref["winner"]
    for r in rows:
        r["results"] = len(r.pop("numbers"))
    emit_json({"bench": "search_scaling", "search": search_args, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
