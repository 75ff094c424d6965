"""TensorLLM: multi-head tensorisation of attention + Tucker with shared factors (arXiv 2501.15674).

Per selected layer, the per-head blocks of W_Q, W_K, W_V and W_O^T (each d_model x d_head, the
paper's row-vector orientation) are stacked into one tensor and decomposed with factors that all
heads share and one core per head; the dense weights are rebuilt in place (denoising: the
architecture is unchanged).

Variants (all the same unit, `variant=`):
- `multihead` (the paper): tensor (D, d, 2g+2, Hkv), modes 0-2 compressed, head mode untouched.
  For multi-head attention (g = 1) this is exactly the paper's D x d x 4 x h tensor, mode-3 order
  (Q, K, V, O^T).
  **Grouped-query attention** (Hkv < H, g = H / Hkv): one slice per K/V group holding its g query
  heads, its one K head, its one V head and its g output heads, mode-3 order
  (Q_1..Q_g, K, V, O^T_1..O^T_g). Every K/V head still exists exactly once, so the rebuilt model
  stays GQA (no duplicated K/V heads), and all blocks still share U1 (d_model), U2 (d_head) and
  U3 (block type). Compression rate of the layer:
      (2 D d (H + Hkv)) / (D R1 + d R2 + (2g+2) R3 + Hkv R1 R2 R3)
  which equals the paper's 4 D^2 / (D R1 + d R2 + 4 R3 + h R1 R2 R3) when g = 1 and D = h d.
- `single`: the ablation on one matrix type (`matrix` = q, k, v or o): tensor (D, d, heads),
  ranks (R1, R2), one core per head.
- `trawl`: TRAWL-style, one shared core and no head mode: tensor (D, Hkv*d, 2g+2)
  (= D x D x 4 for multi-head attention), ranks (R1, R2, R3).

Biases (BERT, RoBERTa, GPT-2, Qwen2) are left unchanged: the paper tensorises weights only, a
bias is a constant shift outside the shared input/output subspaces, and it holds ~0.1% of the
layer's parameters. tests/methods/test_tucker.py checks they are bit-identical after compression.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch

from tensorllm.archs import blocks
from tensorllm.attention import AttnWeights, from_head_blocks, per_head_blocks, read_attention, write_attention
from tensorllm.errors import UserError
from tensorllm.layers import one_layer_as_list, parse_layers
from tensorllm.methods.registry import register
from tensorllm.progress import track
from tensorllm.tensor.tucker import hooi, reconstruct

Ranks = tuple[int, ...] | tuple[float, ...] | str


@dataclass
class TuckerConfig:
    """layers: e.g. 9, [9], "0,3,7-9", "all".
    ranks: explicit integers (R1, R2, R3), fractions of each mode in (0, 1], or "auto" (data-free,
        from each unfolding's singular values against a noise threshold). Exclusive with `rate`.
    rate: target compression rate of each layer's attention (the paper's formula); the largest
        ranks (proportional to the mode sizes) reaching it are used.
    variant: multihead (paper) | single (one matrix type, see `matrix`) | trawl (one core, no head mode).
    """

    layers: int | str | tuple[int, ...] | None = None
    ranks: Ranks | None = None
    rate: float | None = None
    variant: Literal["multihead", "single", "trawl"] = "multihead"
    matrix: Literal["q", "k", "v", "o"] | None = None
    n_iter_max: int = 100
    tol: float = 1e-5
    compute_dtype: Literal["float32", "float64"] = "float64"

    def __post_init__(self) -> None:
        self.layers = one_layer_as_list(self.layers)

    def validate(self) -> None:
        if self.layers is None:
            raise UserError("tucker needs 'layers' (e.g. 9, 0,3,7-9 or all)")
        if (self.ranks is None) == (self.rate is None):
            raise UserError("tucker needs exactly one of 'ranks' and 'rate'")
        if isinstance(self.ranks, str) and self.ranks != "auto":
            raise UserError(f"tucker ranks must be integers, fractions or 'auto', got '{self.ranks}'")
        if isinstance(self.ranks, tuple):
            want = 2 if self.variant == "single" else 3
            if len(self.ranks) != want:
                raise UserError(f"tucker variant '{self.variant}' takes {want} ranks, got {len(self.ranks)}")
            if not all(r > 0 for r in self.ranks):  # `not >` also catches NaN
                raise UserError(f"tucker ranks must be positive, got {list(self.ranks)}")
            if any(isinstance(r, float) for r in self.ranks) and any(r > 1 for r in self.ranks):
                raise UserError(f"fractional ranks must lie in (0, 1], got {list(self.ranks)}")
        if self.rate is not None and not self.rate >= 1:
            raise UserError(f"compression rate must be >= 1, got {self.rate}")
        if (self.variant == "single") != (self.matrix is not None):
            raise UserError("tucker variant 'single' needs 'matrix' (q, k, v or o), and only it takes one")
        if self.n_iter_max < 0 or not self.tol >= 0:
            raise UserError("tucker n_iter_max and tol must be >= 0")


# ---------------------------------------------------------------- tensorisation (pure functions)

def to_tensor(w: AttnWeights, variant: str, matrix: str | None = None) -> torch.Tensor:
    """Stack a layer's attention into the tensor of `variant` (see the module docstring)."""
    q, k, v, o = per_head_blocks(w)  # (H, D, d), (Hkv, D, d), (Hkv, D, d), (H, D, d)
    if variant == "single":
        blk = {"q": q, "k": k, "v": v, "o": o}[matrix]  # (n, D, d)
        return blk.permute(1, 2, 0)  # (D, d, n)
    Hkv, g = w.kv_heads, w.group
    D, d = w.hidden, w.head_dim
    stack = torch.cat([q.reshape(Hkv, g, D, d), k[:, None], v[:, None], o.reshape(Hkv, g, D, d)], dim=1)
    # stack: (Hkv, 2g+2, D, d), block order Q_1..Q_g, K, V, O^T_1..O^T_g
    if variant == "multihead":
        return stack.permute(2, 3, 1, 0)  # (D, d, 2g+2, Hkv)
    return stack.permute(2, 0, 3, 1).reshape(D, Hkv * d, 2 * g + 2)  # trawl: (D, Hkv*d, 2g+2)


def from_tensor(t: torch.Tensor, w: AttnWeights, variant: str, matrix: str | None = None) -> AttnWeights:
    """Inverse of `to_tensor`: new canonical weights (biases and head counts kept from `w`)."""
    q, k, v, o = per_head_blocks(w)
    if variant == "single":
        new = dict(q=q, k=k, v=v, o=o)
        new[matrix] = t.permute(2, 0, 1)  # (n, D, d)
        q, k, v, o = new["q"], new["k"], new["v"], new["o"]
    else:
        Hkv, g, D, d = w.kv_heads, w.group, w.hidden, w.head_dim
        if variant == "multihead":
            stack = t.permute(3, 2, 0, 1)  # (Hkv, 2g+2, D, d)
        else:
            stack = t.reshape(D, Hkv, d, 2 * g + 2).permute(1, 3, 0, 2)  # (Hkv, 2g+2, D, d)
        qs, k, v, os_ = torch.split(stack, [g, 1, 1, g], dim=1)
        q, o = qs.reshape(Hkv * g, D, d), os_.reshape(Hkv * g, D, d)  # (H, D, d)
        k, v = k[:, 0], v[:, 0]  # (Hkv, D, d)
    wq, wk, wv, wo = from_head_blocks(q, k, v, o)
    return w.with_(q=wq, k=wk, v=wv, o=wo)


def compressed_modes(variant: str) -> tuple[int, ...]:
    return (0, 1) if variant == "single" else (0, 1, 2)


def tucker_params(shape: tuple[int, ...], modes: tuple[int, ...], ranks: tuple[int, ...]) -> int:
    """Parameters of a partial Tucker: factors I_n x R_n plus one core per untouched-mode slice."""
    core = math.prod(ranks)
    for m, size in enumerate(shape):
        if m not in modes:
            core *= size
    return sum(shape[m] * r for m, r in zip(modes, ranks)) + core


def ranks_for_rate(shape, modes, target: float, before: int) -> tuple[int, ...]:
    """Largest ranks, proportional to the mode sizes, whose compression rate is >= target."""
    sizes = [shape[m] for m in modes]
    lead = max(sizes)
    best = None
    lo, hi = 1, lead
    while lo <= hi:  # the rate falls as the scale grows: bisect on the largest rank
        mid = (lo + hi) // 2
        ranks = tuple(max(1, min(s, math.ceil(mid * s / lead))) for s in sizes)
        if before / tucker_params(shape, modes, ranks) >= target:
            best, lo = ranks, mid + 1
        else:
            hi = mid - 1
    if best is None:
        floor = before / tucker_params(shape, modes, (1,) * len(modes))
        raise UserError(f"no ranks reach compression rate {target:g} on this layer (at most {floor:.1f} with all ranks 1)")
    return best


def singular_values(mat: torch.Tensor) -> torch.Tensor:
    """Singular values of a float64 matrix, descending, from the eigenvalues of its Gram matrix on the
    shorter side: one matrix product and a small symmetric eigensolve instead of an SVD of the long
    unfolding (4x faster on SmolLM2's layers, the same auto ranks). Squaring loses the singular values
    below ~1e-8 of the largest; when the median (the threshold's scale) is near that, an SVD answers."""
    rows, cols = mat.shape
    gram = mat @ mat.T if rows <= cols else mat.T @ mat  # (min, min)
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)
    if s.numel() and s.median() < 1e-6 * s[0]:  # most values near the squaring's floor: ask an SVD
        return torch.linalg.svdvals(mat)
    return s


AUTO_WHOLE_MODES = 16  # auto_ranks keeps modes this small at full rank


def gavish_donoho_rank(s: torch.Tensor, rows: int, cols: int) -> int:
    """How many of the singular values `s` of a rows x cols matrix lie above Gavish & Donoho's
    threshold omega(beta) * median(s), beta = min / max of the shape; at least 1."""
    beta = min(rows, cols) / max(rows, cols)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return max(1, int((s > omega * s.median()).sum()))


def auto_ranks(t: torch.Tensor, modes: tuple[int, ...]) -> tuple[int, ...]:
    """Data-free ranks: per mode, singular values of the unfolding above the Gavish-Donoho threshold.

    For an m x n matrix (m <= n) of signal plus i.i.d. noise, the optimal hard threshold with
    unknown noise level is omega(beta) * median(singular values), beta = m / n (Gavish & Donoho
    2014). Small modes (<= 16, e.g. the block-type mode) are kept at full rank: a median over a
    handful of values says nothing about noise.
    """
    out = []
    for m in modes:
        size = t.shape[m]
        if size <= AUTO_WHOLE_MODES:
            out.append(size)
            continue
        mat = t.movedim(m, 0).reshape(size, -1).double()  # (I_m, prod(others))
        out.append(gavish_donoho_rank(singular_values(mat), *mat.shape))
    return tuple(out)


def resolve_ranks(cfg: TuckerConfig, t: torch.Tensor, before: int) -> tuple[int, ...]:
    modes = compressed_modes(cfg.variant)
    sizes = [t.shape[m] for m in modes]
    if cfg.rate is not None:
        return ranks_for_rate(tuple(t.shape), modes, cfg.rate, before)
    if cfg.ranks == "auto":
        return auto_ranks(t, modes)
    if any(isinstance(r, float) for r in cfg.ranks):
        return tuple(max(1, math.ceil(f * s - 1e-9)) for f, s in zip(cfg.ranks, sizes))
    for r, s, m in zip(cfg.ranks, sizes, modes):
        if r > s:
            raise UserError(f"rank {r} is larger than mode {m + 1} of the tensor (size {s}; shape {tuple(t.shape)})")
    return tuple(int(r) for r in cfg.ranks)


# ---------------------------------------------------------------- the transform

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    n = torch.linalg.vector_norm(a).item()
    return torch.linalg.vector_norm(a - b).item() / n if n else 0.0


def compress_layer(w: AttnWeights, cfg: TuckerConfig, device: torch.device) -> tuple[AttnWeights, dict]:
    """Decompose and rebuild one layer's attention; return new weights and the layer's record."""
    t0 = time.perf_counter()
    dtype = torch.float64 if cfg.compute_dtype == "float64" else torch.float32
    wd = w.with_(q=w.q.to(device, dtype), k=w.k.to(device, dtype), v=w.v.to(device, dtype), o=w.o.to(device, dtype))
    t = to_tensor(wd, cfg.variant, cfg.matrix)
    modes = compressed_modes(cfg.variant)
    before = t.numel()
    ranks = resolve_ranks(cfg, t, before)
    res = hooi(t, ranks, modes, n_iter_max=cfg.n_iter_max, tol=cfg.tol, compute_dtype=dtype)
    new = from_tensor(reconstruct(res), wd, cfg.variant, cfg.matrix)
    after = tucker_params(tuple(t.shape), modes, ranks)
    record = {
        "tensor_shape": list(t.shape),
        "ranks": list(ranks),
        "params_before": before,
        "params_after": after,
        "compression_rate": before / after,
        "rel_error": _rel(t, reconstruct(res)),
        "rel_error_per_matrix": {n: _rel(getattr(wd, n), getattr(new, n)) for n in ("q", "k", "v", "o")},
        "hooi_iterations": res.n_iter,
        "converged": res.converged,
        "seconds": time.perf_counter() - t0,
    }
    return new, record


@register("tucker", TuckerConfig)
def apply_tucker(model, arch, cfg: TuckerConfig, ctx) -> dict:
    """TensorLLM multi-head Tucker denoising of the attention of the selected layers."""
    layers = parse_layers(cfg.layers, len(blocks(model, arch)))
    records = []
    for i in track(layers, "tucker", enabled=ctx.progress):
        new, rec = compress_layer(read_attention(model, arch, i), cfg, ctx.device)
        write_attention(model, arch, i, new)
        records.append({"layer": i, **rec})
    total_before = sum(r["params_before"] for r in records)
    total_after = sum(r["params_after"] for r in records)
    return {"layers": records, "summary": {
        "variant": cfg.variant, "layers": layers, "compression_rate": total_before / total_after,
        "mean_rel_error": sum(r["rel_error"] for r in records) / len(records)}}
