"""The real search: SmolLM2-135M on WikidataQA, Tucker (30 layers x 3 rank settings) + LASER + hybrid.

    python bench/search_smollm2.py --model smollm2-135m --out runs/search_smollm2 --time-budget 520
    python bench/search_smollm2.py --model $S/smol.gguf --data $S/qa_wikidata.json --out $S/search \\
        --time-budget 520 [--expand-kv] [--limit-val 1000]
    # rerun the same command until it prints "status: complete"; finished work is never redone

Stages, each its own store under --out (resumable, see tensorllm/search/store.py):
1. tucker: every layer x the --ranks settings (default "288,48,4;64,32,1;auto": mild, paper-like
   aggressive with one shared block-type factor, and the data-free Gavish-Donoho ranks) = 90 configurations;
2. laser:  every layer x --rhos on up_proj (default 0.5,0.1,0.01) = 90 configurations;
3. hybrid: the top-k (default 3) Tucker configurations x the top-k LASER ones = 9 configurations.
The model is loaded once for all three. Each stage selects on validation accuracy (ties: lower
loss) and evaluates its winner and the baseline on the test split.

--time-budget S stops starting new evaluations after S seconds in all (keep it ~60-80 s under the
job's wall-clock limit: one evaluation of the full validation split takes a few seconds on a GPU,
one test-split evaluation ~4x that); the next run continues where this one stopped.
Prints the baseline/winner table and the total seconds; writes OUT/bench.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="alias, HF directory or .gguf file")
    p.add_argument("--data", default=None, help="qa_wikidata task.json (default: the cached BIG-bench file)")
    p.add_argument("--out", default="runs/search_smollm2", help="folder of the three stores and bench.json")
    p.add_argument("--ranks", default="288,48,4;64,32,1;auto")
    p.add_argument("--rhos", default="0.5,0.1,0.01")
    p.add_argument("--layers", default="all")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--limit-val", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--answer-mode", default="faithful", choices=("faithful", "continuation"))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--expand-kv", action="store_true", help="expand the 3 K/V heads to 9 (multi-head) first")
    p.add_argument("--time-budget", type=float, default=None, help="seconds for this run (then rerun)")
    p.add_argument("--stages", default="tucker,laser,hybrid")
    return p.parse_args(argv)


def _row(stage: str, role: str, r: dict | None) -> dict | None:
    if r is None:
        return None
    v, t = r.get("val") or {}, r.get("test") or {}
    return {
        "stage": stage,
        "role": role,
        "configuration": r["describe"],
        "val_acc": v.get("accuracy"),
        "val_loss": v.get("loss"),
        "test_acc": t.get("accuracy"),
        "test_loss": t.get("loss"),
        "delta_val": r.get("delta_val"),
        "delta_test": r.get("delta_test"),
    }


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    import torch

    from tensorllm.base.devices import resolve_device
    from tensorllm.cli.app import _quiet_transformers
    from tensorllm.methods.registry import parse_floats
    from tensorllm.methods.tucker import parse_rank_settings
    from tensorllm.models.io import load_model
    from tensorllm.search import SearchSpec, run_search

    _quiet_transformers()
    device = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model, dtype=dtype, device=str(device))
    if args.expand_kv:
        from tensorllm.models.expand_kv import expand_kv

        expand_kv(loaded.model, loaded.arch)
    load_s = time.perf_counter() - t0
    print(f"loaded {args.model} ({dtype}, {device}) in {load_s:.1f} s", flush=True)

    common = dict(
        model=args.model,
        task="wikidata_qa",
        data=args.data,
        limit_val=args.limit_val,
        limit_test=args.limit_test,
        batch_size=args.batch_size,
        answer_mode=args.answer_mode,
        device=str(device),
        dtype=dtype,
        expand_kv=args.expand_kv,
        layers=args.layers,
    )
    stages = {
        "tucker": dict(method="tucker", options={"ranks": parse_rank_settings(args.ranks)}),
        "laser": dict(
            method="laser", options={"rhos": parse_floats(args.rhos, "--rhos"), "matrices": ("up",)}
        ),
        "hybrid": dict(method="hybrid", sources=(str(out / "tucker"), str(out / "laser")), top_k=args.top_k),
    }
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    reports: dict[str, dict] = {}
    status = "complete"
    for name in wanted:
        budget = None
        if args.time_budget is not None:
            budget = args.time_budget - (time.perf_counter() - t0)
            if budget <= 1:
                status = "partial"
                break
        print(f"== stage {name}", flush=True)
        rep = run_search(
            SearchSpec(store=str(out / name), time_budget=budget, **common, **stages[name]), loaded=loaded
        )
        reports[name] = rep
        if rep["status"] != "complete":
            status = "partial"
            break

    rows = []
    for name, rep in reports.items():
        roles = rep["roles"]
        if name == wanted[0]:
            rows.append(_row("-", "baseline", roles.get("baseline")))
        rows.append(_row(name, "winner", roles.get("winner")))
        rows.append(_row(name, "auto ranks, best layer on val", roles.get("auto_best")))
        rows.append(_row(name, "auto ranks at winner's layer", roles.get("auto_at_winner_layer")))
    rows = [r for r in rows if r is not None]
    total = time.perf_counter() - t0
    print(
        f"\nSmolLM2-135M{' (K/V expanded)' if args.expand_kv else ''}, wikidata_qa, {args.answer_mode}, "
        f"{dtype} on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print("| stage | role | configuration | val acc | Δ val | test acc | Δ test | test loss |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['stage']} | {r['role']} | {r['configuration']} | {_f(r['val_acc'])} "
            f"| {_f(r['delta_val'], '{:+.2f}')} "
            f"| {_f(r['test_acc'])} | {_f(r['delta_test'], '{:+.2f}')} | {_f(r['test_loss'], '{:.4f}')} |"
        )
    evaluated = sum(rep["run"]["evaluated_this_run"] for rep in reports.values())
    print(
        f"status: {status}; {evaluated} evaluations this run; total {total:.1f} s (model load {load_s:.1f} s)"
    )
    result = {
        "status": status,
        "model": args.model,
        "expand_kv": args.expand_kv,
        "dtype": dtype,
        "device": str(device),
        "task": "wikidata_qa",
        "answer_mode": args.answer_mode,
        "rows": rows,
        "stages": {
            k: {
                "status": v["status"],
                "progress": v["progress"],
                "run": v["run"],
                "report": str(out / k / "report.md"),
            }
            for k, v in reports.items()
        },
        "seconds_total": round(total, 2),
        "seconds_load": round(load_s, 2),
        "args": vars(args),
    }
    from tensorllm.base.files import atomic_write_text

    atomic_write_text(out / "bench.json", json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
