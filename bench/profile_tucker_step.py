"""Where one Tucker step's time goes: HOOI of one SmolLM2 layer as the search runs it.

    python bench/profile_tucker_step.py --device cuda --layer 5 --out DIR

For each rank setting of the search's grid and each compute dtype: wall time of `compress_layer`
(median of 5, synchronised), its HOOI sweeps, and the share of `torch.linalg.eigh` in it (timed by
wrapping it); then torch.profiler over one float64 call, top operators -> DIR/tucker_step.txt.
Summary -> DIR/tucker_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from tensorllm.attention import read_attention
from tensorllm.base.devices import eval_dtype, resolve_device
from tensorllm.methods import tucker
from tensorllm.methods.tucker_tensor import parse_ranks
from tensorllm.models.io import load_model


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = resolve_device(args.device)
    loaded = load_model(args.model, dtype=eval_dtype("auto", device), device=str(device))
    w = read_attention(loaded.model, loaded.arch, args.layer)
    eigh, spent = torch.linalg.eigh, [0.0]

    def timed_eigh(*a, **kw):
        _sync(device)
        t0 = time.perf_counter()
        out = eigh(*a, **kw)
        _sync(device)
        spent[0] += time.perf_counter() - t0
        return out

    rows = []
    for ranks in ("288,48,4", "64,32,1", "auto"):
        for dtype in ("float64", "float32"):
            cfg = tucker.TuckerConfig(ranks=parse_ranks(ranks), compute_dtype=dtype)
            times, eigh_s = [], []
            for _ in range(5):
                spent[0] = 0.0
                torch.linalg.eigh = timed_eigh
                try:
                    _sync(device)
                    t0 = time.perf_counter()
                    _, record = tucker.compress_layer(w, cfg, device)
                    _sync(device)
                finally:
                    torch.linalg.eigh = eigh
                times.append(time.perf_counter() - t0)
                eigh_s.append(spent[0])
            row = {
                "ranks": ranks,
                "resolved": record["ranks"],
                "dtype": dtype,
                "seconds": round(statistics.median(times), 4),
                "eigh_seconds": round(statistics.median(eigh_s), 4),
                "sweeps": record["hooi_iterations"],
                "rel_error": record["rel_error"],
            }
            print(row)
            rows.append(row)
    cfg = tucker.TuckerConfig(ranks=(64, 32, 1), compute_dtype="float64")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        tucker.compress_layer(w, cfg, device)
        _sync(device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tucker_step.txt").write_text(
        prof.key_averages().table(sort_by="cpu_time_total", row_limit=30)
    )
    (args.out / "tucker_step.json").write_text(
        json.dumps({"layer": args.layer, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
