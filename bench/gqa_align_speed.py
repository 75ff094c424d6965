"""Where the time of one layer's MHA -> GQA plan goes: similarity, grouping, alignment, merge (issue 13).

    python bench/gqa_align_speed.py --device cuda --out runs/gqa_align_speed.json  # LLaMA-2-7B layer
    python bench/gqa_align_speed.py --small                                          # CPU, checks it

One attention layer of LLaMA-2-7B's shape (32 heads, head_dim 128, hidden 4096) with random weights
and the input second moment of random activations (timing only: the weights' values do not change the
work, only the Newton-Schulz iteration count, which the JSON records on real-shaped conditioning), for
each Procrustes method ("svd": torch.linalg.svd, "newton_schulz": align.py's matrix-product iteration),
the seconds of: key and value pair similarities, the partition, aligning every group's keys and
values, and the whole `plan_layer` (which also builds the cross products and merges).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import emit_json  # bench/common.py

import tensorllm.methods.gqa.align as A
from tensorllm.attention import AttnWeights
from tensorllm.base.versions import versions
from tensorllm.methods.gqa.convert import plan_layer
from tensorllm.methods.gqa.grouping import partition


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def layer(
    heads: int, head_dim: int, hidden: int, tokens: int, device, gen
) -> tuple[AttnWeights, torch.Tensor]:
    """Random q/k/v/o (bf16-sized values in float64) and the (hidden+1)^2 second moment with a bias row."""
    f = dict(dtype=torch.float64, device=device)
    w = [torch.randn(heads * head_dim, hidden, generator=gen, **f) / hidden**0.5 for _ in range(3)]
    o = torch.randn(hidden, heads * head_dim, generator=gen, **f) / hidden**0.5
    x = torch.randn(tokens, hidden, generator=gen, **f) * torch.logspace(0, -2, hidden, **f)  # anisotropic
    x1 = torch.cat([x, torch.ones(tokens, 1, **f)], dim=1)
    weights = AttnWeights(w[0], w[1], w[2], o, None, None, None, None, heads, heads, head_dim)
    return weights, x1.T @ x1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="8 heads of 32 on a 256-wide model, CPU")
    ap.add_argument("--device", default=None)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per method (the first also warms up)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    heads, d, hidden = (8, 32, 256) if args.small else (32, 128, 4096)
    G = args.kv_heads or heads // 4
    gen = torch.Generator(device=device).manual_seed(0)
    w, gram = layer(heads, d, hidden, 4 * hidden, device, gen)
    planes_k = A.Planes.for_rope(d, d, "half")
    planes_v = A.Planes.orthogonal(d)
    CK = A.cross_blocks(w.k @ gram[:-1, :-1] @ w.k.T, heads, d)
    CV = A.cross_blocks(w.v @ gram[:-1, :-1] @ w.v.T, heads, d)
    rows = {}
    saved = dict(A.PROCRUSTES_BY_DEVICE)
    try:
        for method in ("svd", "newton_schulz"):
            A.PROCRUSTES_BY_DEVICE[device.type] = method
            for rep in range(args.repeats):
                SK, t_sk = timed(lambda: A.similarity(CK, planes_k), device)
                SV, t_sv = timed(lambda: A.similarity(CV, planes_v), device)
                groups, t_part = timed(lambda: partition(SK + SV, G), device)
                _, t_ak = timed(lambda: A.align_groups(A.group_blocks(CK, groups), planes_k), device)
                _, t_av = timed(lambda: A.align_groups(A.group_blocks(CV, groups), planes_v), device)
                plan, t_plan = timed(lambda: plan_layer(w, gram, G, planes_k), device)
                rows[method] = {
                    "similarity_keys_s": t_sk,
                    "similarity_values_s": t_sv,
                    "partition_s": t_part,
                    "align_keys_s": t_ak,
                    "align_values_s": t_av,
                    "plan_layer_s": t_plan,
                    "value_energy_kept": plan.record["value_energy_kept"],
                    "key_energy_kept": plan.record["key_energy_kept"],
                    "groups": plan.record["groups"],
                    "repeat": rep,
                }
                print(
                    method, {k: round(v, 4) for k, v in rows[method].items() if k.endswith("_s")}, flush=True
                )
    finally:
        A.PROCRUSTES_BY_DEVICE.clear()
        A.PROCRUSTES_BY_DEVICE.update(saved)
    same = rows["svd"]["groups"] == rows["newton_schulz"]["groups"]
    emit_json(
        {
            "bench": "gqa_align_speed",
            "weights": "random (timing only)",
            "shape": {"heads": heads, "head_dim": d, "hidden": hidden, "kv_heads_after": G},
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "methods": rows,
            "same_groups": same,
            "versions": versions(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
