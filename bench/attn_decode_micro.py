"""One decode step's attention alone, LLaMA-2-7B layer shape: which kernel reads a grouped cache fastest.

    python bench/attn_decode_micro.py --out runs/attn_micro.json     # CUDA
    python bench/attn_decode_micro.py --small   # CPU, checks the script (no chunked rows)

Batch 16, 32 query heads, head dim 128, a static cache of L positions (4,232 as gqa_decode.py's loop)
with a boolean mask (the last 128 slots unfilled), bfloat16. Kernels, each timed with CUDA events
(median of 50 calls after 10 warm-up calls) and checked against float32 math:
- mha: SDPA, 32 K/V heads (the original model's step);
- packed: SDPA, 8 K/V heads, each group's 4 query heads as 4 query rows (tensorllm's packed attention);
- gqa_native: SDPA with enable_gqa=True, 8 K/V heads;
- chunked_S: 8 K/V heads, the cache cut into S chunks treated as extra heads, one call of the
  memory-efficient kernel returning each chunk's log-sum-exp, the chunks merged in float32
  (flash-decoding's split-K from a kernel torch already ships; private aten op, experimental).
GB/s = bytes of K and V read / time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import emit_json  # bench/common.py


def chunked(q, k, v, mask, chunks: int):
    """q (B, G, R, d), k/v (B, G, L, d), mask (B, 1, 1, L) bool -> (B, G, R, d)."""
    B, G, R, d = q.shape
    L = k.shape[2]
    c = L // chunks
    kc = k.view(B, G * chunks, c, d)  # (B, G*S, L/S, d): chunks as heads, a view
    vc = v.view(B, G * chunks, c, d)
    qc = q[:, :, None].expand(B, G, chunks, R, d).reshape(B, G * chunks, R, d)  # (B, G*S, R, d)
    pad = (c + 15) // 16 * 16  # the kernel wants the bias rows aligned
    bias = torch.zeros(B, 1, chunks, 1, pad, dtype=q.dtype, device=q.device)
    bias[..., :c] = torch.where(mask.view(B, 1, chunks, 1, c), 0.0, float("-inf")).to(q.dtype)
    bias = bias.expand(B, G, chunks, R, pad).reshape(B, G * chunks, R, pad)[..., :c]  # (B, G*S, R, L/S)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qc, kc, vc, bias, True)[:2]
    lse = lse[..., :R].view(B, G, chunks, R, 1)  # (B, G, S, R, 1)
    w = torch.softmax(lse, dim=2)  # each chunk's share of the row's softmax mass
    return (out.view(B, G, chunks, R, d).float() * w).sum(2).to(q.dtype)


def timed(fn, n=50, warm=10, cuda=True):
    """Median milliseconds of `fn()`: CUDA events on the GPU, the wall clock on the CPU."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=None, help="cache positions (default 4,232; --small: 256)")
    ap.add_argument("--small", action="store_true", help="CPU, float32, batch 2, 256 positions")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    cuda = not args.small
    dev, dt = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    B, H, G, d, L = 16 if cuda else 2, 32, 8, 128, args.length or (4232 if cuda else 256)
    q = torch.randn(B, H, 1, d, device=dev, dtype=dt)
    k32, v32 = (torch.randn(B, H, L, d, device=dev, dtype=dt) for _ in range(2))
    k8, v8 = k32[:, ::4].contiguous(), v32[:, ::4].contiguous()
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool, device=dev)
    mask[..., L - 128 :] = False
    packed_q = q.view(B, G, 4, d)  # query head h = g * 4 + r
    ref = F.scaled_dot_product_attention(
        q.float(), k8.float().repeat_interleave(4, 1), v8.float().repeat_interleave(4, 1), attn_mask=mask
    )  # (B, H, 1, d)
    rows = {}

    def run(name, fn, nbytes, check=None):
        try:
            ms = timed(fn, n=50 if cuda else 5, warm=10 if cuda else 1, cuda=cuda)
            row = {"ms": round(ms, 4), "GB_per_s": round(nbytes / ms / 1e6, 1)}
            if check is not None:
                row["max_abs_err_vs_fp32"] = float((check().float().reshape(ref.shape) - ref).abs().max())
            rows[name] = row
        except Exception as exc:  # keep the other kernels' numbers
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(name, rows[name], flush=True)

    kv32, kv8 = 2 * k32.numel() * k32.element_size(), 2 * k8.numel() * k8.element_size()
    run("mha", lambda: F.scaled_dot_product_attention(q, k32, v32, attn_mask=mask), kv32)
    run(
        "packed",
        lambda: F.scaled_dot_product_attention(packed_q, k8, v8, attn_mask=mask),
        kv8,
        lambda: F.scaled_dot_product_attention(packed_q, k8, v8, attn_mask=mask),
    )
    run(
        "gqa_native",
        lambda: F.scaled_dot_product_attention(q, k8, v8, attn_mask=mask, enable_gqa=True),
        kv8,
        lambda: F.scaled_dot_product_attention(q, k8, v8, attn_mask=mask, enable_gqa=True),
    )
    for s in (2, 4, 8, 23) if cuda else ():  # the memory-efficient kernel is CUDA's
        if L % s == 0:
            run(
                f"chunked_{s}",
                lambda s=s: chunked(packed_q, k8, v8, mask, s),
                kv8,
                lambda s=s: chunked(packed_q, k8, v8, mask, s),
            )
    emit_json(
        {
            "bench": "attn_decode_micro",
            "B": B,
            "H": H,
            "G": G,
            "d": d,
            "L": L,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
