"""Benchmark: multi-head Tucker (HOOI) on every attention layer of a LLaMA-2-7B-shaped model.

For each of `--layers` random layers (W_q, W_k, W_v, W_o: hidden x hidden, nn.Linear layout, in the
checkpoint dtype, built on the device), the timed step is: stack the heads into a
hidden x head_dim x 4 x heads tensor (Q, K, V, O^T), run `tensorllm.tensor.tucker.hooi` on modes
0, 1, 2, rebuild the tensor and write it back into the four matrices. A first call on a copy of
layer 0 (CUDA context, cuSOLVER handles, kernel loading) is timed separately as warm-up.

    pip install -e .                                        # the script imports tensorllm
    python bench/tucker_7b.py --device cuda --layers 32 --json out/tucker_7b.json
    python bench/tucker_7b.py --device cuda --compute-dtype float64,float32 --tensorly
    python bench/tucker_7b.py --device cpu --layers 1 --hidden 512 --heads 4   # quick CPU check

`--tensorly` also times TensorLy's `partial_tucker` on layer 0 on the CPU (numpy backend) next to
ours on the CPU, both capped at `--tensorly-n-iter-max` sweeps, and, with `--device cuda`, TensorLy
with the pytorch backend on the GPU (any failure is caught and reported).
Random Gaussian weights have flat spectra, the slowest case for HOOI to converge; `--weights
decaying` draws matrices whose singular values decay, closer to trained weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from tensorllm.attention import AttnWeights
from tensorllm.methods.tucker_tensor import from_tensor, to_tensor
from tensorllm.tensor.tucker import hooi, hosvd, reconstruct

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COMPUTE = {"float32": torch.float32, "float64": torch.float64}
MODES = (0, 1, 2)


def to_heads(wq, wk, wv, wo, heads):
    """(H*d, D) x3 and (D, H*d) -> (D, d, 4, H): the library's multi-head tensor of one MHA layer."""
    return to_tensor(_weights(wq, wk, wv, wo, heads), "multihead")


def from_heads(x, wq, wk, wv, wo):
    """Inverse of `to_heads` (the library's `from_tensor`), written back in place in the matrices' dtype."""
    new = from_tensor(x, _weights(wq, wk, wv, wo, x.shape[3]), "multihead")
    for w, n in zip((wq, wk, wv, wo), (new.q, new.k, new.v, new.o)):
        w.copy_(n)


def _weights(wq, wk, wv, wo, heads) -> AttnWeights:
    return AttnWeights(
        wq, wk, wv, wo, None, None, None, None, heads=heads, kv_heads=heads, head_dim=wq.shape[0] // heads
    )


def make_layer(args, layer, device):
    """Four deterministic random matrices for one layer, in the checkpoint dtype, on `device`."""
    gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + layer)
    n = args.hidden
    mats = []
    for _ in range(4):
        w = torch.randn(n, n, generator=gen, device=device, dtype=torch.float32)  # (D, D)
        if args.weights == "decaying":
            # scale the columns of one Gaussian factor: singular values fall off like k^-0.5
            scale = torch.arange(1, n + 1, device=device, dtype=torch.float32).rsqrt()  # (D,)
            g = torch.randn(n, n, generator=gen, device=device, dtype=torch.float32)  # (D, D)
            w = (w * scale) @ g / n**0.5  # (D, D)
        mats.append((0.02 * w / w.std()).to(DTYPES[args.dtype]))
    return mats


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compress_layer(mats, args, ranks, compute_dtype, heads, n_iter_max=None):
    """The timed step: stack, HOOI, rebuild, write back. Returns the TuckerResult."""
    x = to_heads(*mats, heads)  # (D, d, 4, H)
    # "full-hosvd" is the textbook start (every factor from HOSVD, as up to 2026-11-25): the
    # library skips the start factor the first sweep never reads; this times the difference.
    init = (
        hosvd(x, ranks, MODES, compute_dtype=compute_dtype).factors if args.start == "full-hosvd" else "hosvd"
    )
    res = hooi(
        x,
        ranks,
        MODES,
        n_iter_max=args.n_iter_max if n_iter_max is None else n_iter_max,
        tol=args.tol,
        init=init,
        compute_dtype=compute_dtype,
    )
    from_heads(reconstruct(res), *mats)
    return res


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def run_config(args, ranks, compute_name, device):
    compute_dtype = COMPUTE[compute_name]
    print(f"\n== compute dtype {compute_name}: building {args.layers} layers on {device} ...")
    layers = [make_layer(args, i, device) for i in range(args.layers)]
    warm = [w.clone() for w in layers[0]]
    # One sweep is enough to initialise the CUDA context, cuSOLVER/cuBLAS handles and kernels.
    _, warm_s = timed(
        lambda: compress_layer(warm, args, ranks, compute_dtype, args.heads, n_iter_max=1), device
    )
    warm = None  # free it before timing the real layers
    print(f"warm-up (layer 0 copy, 1 sweep): {warm_s:.3f} s")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_layer = []
    for i, mats in enumerate(layers):
        res, secs = timed(lambda: compress_layer(mats, args, ranks, compute_dtype, args.heads), device)
        per_layer.append(
            {
                "layer": i,
                "seconds": secs,
                "n_iter": res.n_iter,
                "converged": res.converged,
                "first_sweep_error": res.errors[0],
                "final_error": res.errors[-1],
            }
        )
        print(
            f"  layer {i + 1}/{args.layers}: {secs:.3f} s, {res.n_iter} sweeps, "
            f"error {res.errors[0]:.5f} -> {res.errors[-1]:.5f}",
            flush=True,
        )
    secs = [p["seconds"] for p in per_layer]
    total_sweeps = sum(p["n_iter"] for p in per_layer)
    parts = breakdown(args, ranks, compute_dtype, device)
    # Everything but the start is sweeps: a rough cost of one sweep. The library's start is a
    # HOSVD without the first mode (no Gram + eigh of the D x D matrix).
    start_s = parts["hosvd_s"] - (
        0 if args.start == "full-hosvd" else parts["gram_mode0_s"] + parts["eigh_mode0_s"]
    )
    sweep_s = (sum(secs) - args.layers * start_s) / max(total_sweeps, 1)
    out = {
        "compute_dtype": compute_name,
        "start": args.start,
        "warmup_s": warm_s,
        "total_s": sum(secs),
        "median_layer_s": statistics.median(secs),
        "max_layer_s": max(secs),
        "total_sweeps": total_sweeps,
        "sweep_s_estimate": sweep_s,
        "layers": per_layer,
        "breakdown": parts,
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def breakdown(args, ranks, compute_dtype, device):
    """Where a layer's time goes: one Gram + eigh of the largest mode, and a plain HOSVD."""
    mats = make_layer(args, 0, device)
    x = to_heads(*mats, args.heads).to(compute_dtype)  # (D, d, 4, H)
    mat = x.reshape(x.shape[0], -1)  # (D, d*4*H)
    gram, gram_s = timed(lambda: mat @ mat.T, device)  # (D, D)
    _, eigh_s = timed(lambda: torch.linalg.eigh(gram), device)
    _, hosvd_s = timed(lambda: hosvd(x, ranks, MODES, compute_dtype=compute_dtype), device)
    return {"gram_mode0_s": gram_s, "eigh_mode0_s": eigh_s, "hosvd_s": hosvd_s}


def run_tensorly(args, ranks, device):
    """TensorLy's partial_tucker vs ours on layer 0, same sweep cap; GPU attempt if CUDA."""
    import tensorly as tl  # lazy: only needed here
    from tensorly.decomposition import partial_tucker

    cap = args.tensorly_n_iter_max
    mats = [w.float().cpu() for w in make_layer(args, 0, device)]
    x = to_heads(*mats, args.heads).double().contiguous()  # (D, d, 4, H) float64 on the CPU
    out = {"tensorly_version": tl.__version__, "n_iter_max": cap}
    cpu = torch.device("cpu")
    res, secs = timed(lambda: hooi(x, ranks, MODES, n_iter_max=cap, tol=args.tol), cpu)
    out["ours_cpu"] = {"seconds": secs, "n_iter": res.n_iter, "final_error": res.errors[-1]}
    print(f"ours, CPU float64: {secs:.2f} s, {res.n_iter} sweeps, error {res.errors[-1]:.5f}")

    def call(t):
        return partial_tucker(t, rank=list(ranks), modes=list(MODES), n_iter_max=cap, tol=args.tol)

    tl.set_backend("numpy")
    try:
        ((_, _), errs), secs = timed(lambda: call(x.numpy()), cpu)
        err = float(errs[-1])
        out["tensorly_cpu"] = {"seconds": secs, "n_iter": len(errs), "final_error": err}
        print(f"TensorLy, CPU numpy float64: {secs:.2f} s, {len(errs)} sweeps, error {err:.5f}")
    except Exception as exc:  # report, do not hide: the comparison is the point
        out["tensorly_cpu"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"TensorLy on the CPU failed: {type(exc).__name__}: {exc}")
    if device.type == "cuda":
        tl.set_backend("pytorch")
        try:
            xg = x.to(device)
            ((_, _), errs), secs = timed(lambda: call(xg), device)
            err = float(errs[-1])
            out["tensorly_gpu"] = {"seconds": secs, "n_iter": len(errs), "final_error": err}
            print(f"TensorLy, GPU pytorch float64: {secs:.2f} s, {len(errs)} sweeps, error {err:.5f}")
        except Exception as exc:
            out["tensorly_gpu"] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=3),
            }
            print(f"TensorLy on the GPU failed: {type(exc).__name__}: {exc}")
        finally:
            tl.set_backend("numpy")
    return out


COLUMNS = [  # (title, width, format, getter)
    ("compute", 8, "s", lambda r: r["compute_dtype"]),
    ("start", 10, "s", lambda r: r["start"]),
    ("warm-up s", 9, ".3f", lambda r: r["warmup_s"]),
    ("total s", 8, ".3f", lambda r: r["total_s"]),
    ("median/layer s", 14, ".3f", lambda r: r["median_layer_s"]),
    ("sweeps", 6, "d", lambda r: r["total_sweeps"]),
    ("~s/sweep", 8, ".3f", lambda r: r["sweep_s_estimate"]),
    ("eigh(D) s", 9, ".3f", lambda r: r["breakdown"]["eigh_mode0_s"]),
    ("hosvd s", 8, ".3f", lambda r: r["breakdown"]["hosvd_s"]),
]


def print_table(runs, args):
    d = args.hidden // args.heads
    print(
        f"\n{args.layers} layers of {args.hidden}x{d}x4x{args.heads}, ranks {tuple(args.ranks)}, "
        f"input {args.dtype}, {args.weights} weights, tol {args.tol:g}, "
        f"n_iter_max {args.n_iter_max}"
    )
    head = " | ".join(f"{title:>{w}}" for title, w, _, _ in COLUMNS)
    print(head)
    print("-" * len(head))
    for r in runs:
        print(" | ".join(f"{get(r):>{w}{fmt}}" for _, w, fmt, get in COLUMNS))


def self_check():
    """to_heads/from_heads round trip and block layout on a tiny layer."""
    heads, d = 3, 2
    mats = [torch.randn(heads * d, heads * d) for _ in range(4)]
    x = to_heads(*mats, heads)
    assert torch.equal(x[:, :, 0, 1], mats[0][d : 2 * d, :].T)
    assert torch.equal(x[:, :, 3, 2], mats[3][:, 2 * d : 3 * d])
    copies = [torch.empty_like(m) for m in mats]
    from_heads(x, *copies)
    assert all(torch.equal(a, b) for a, b in zip(mats, copies))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument(
        "--ranks", default=None, help="R1,R2,R3 (default hidden/4, head_dim/2, 3: 1024,64,3 for 7B)"
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="checkpoint dtype")
    p.add_argument("--compute-dtype", default="float64", help="comma list of float64, float32")
    p.add_argument("--n-iter-max", type=int, default=100)
    # TensorLy's default tol (what the paper ran); the library's own default 1e-8 takes ~100
    # sweeps on random weights. Pass --tol 1e-8 to time that.
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--weights", choices=["gaussian", "decaying"], default="gaussian")
    p.add_argument(
        "--start",
        choices=["library", "full-hosvd"],
        default="library",
        help="full-hosvd: also compute the start factor the first sweep never reads (the old way)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--linalg",
        choices=["default", "cusolver", "magma"],
        default="default",
        help="torch.backends.cuda.preferred_linalg_library (CUDA only)",
    )
    p.add_argument("--tensorly", action="store_true", help="also time TensorLy's partial_tucker on layer 0")
    p.add_argument("--tensorly-n-iter-max", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args()
    if args.hidden % args.heads:
        p.error("--hidden must be a multiple of --heads")
    d = args.hidden // args.heads
    default_ranks = [args.hidden // 4, d // 2, 3]
    args.ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else default_ranks
    if len(args.ranks) != 3:
        p.error("--ranks takes three numbers R1,R2,R3")
    args.compute_dtypes = [c.strip() for c in args.compute_dtype.split(",")]
    bad = [c for c in args.compute_dtypes if c not in COMPUTE]
    if bad:
        p.error(f"unknown --compute-dtype {bad}; use float64 and/or float32")
    return args


def main():
    args = parse_args()
    self_check()
    device = torch.device(args.device)
    if device.type == "cuda" and args.linalg != "default":
        torch.backends.cuda.preferred_linalg_library(args.linalg)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    print(f"torch {env['torch']} on {env['device']}")
    runs = [run_config(args, args.ranks, c, device) for c in args.compute_dtypes]
    print_table(runs, args)
    config = {k: v for k, v in vars(args).items() if k != "json"}
    result = {"config": config, "environment": env, "runs": runs}
    if args.tensorly:
        print("\n== TensorLy comparison on layer 0")
        result["tensorly"] = run_tensorly(args, args.ranks, device)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
