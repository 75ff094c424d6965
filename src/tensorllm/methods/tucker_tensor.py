"""TensorLLM's tensorisation and rank rules as pure functions of a layer's canonical weights.

`to_tensor` / `from_tensor` stack the per-head blocks of Q, K, V and O^T into the tensor of a
variant and back (layouts: methods/tucker.py's docstring); `tucker_params` and `ranks_for_rate`
are the paper's parameter count and compression rate; `auto_ranks` picks data-free ranks with
the Gavish-Donoho threshold; `canonical_query_order` / `permute_query_heads` take where a group's
query heads are stored out of the decomposition. Nothing here reads or writes a model.
"""

from __future__ import annotations

import functools
import math

import torch

from tensorllm.attention import AttnWeights, from_head_blocks, per_head_blocks
from tensorllm.base.errors import UserError


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


def canonical_query_order(w: AttnWeights, variant: str) -> list[int] | None:
    """An order of the query heads, inside each K/V group, that depends on the heads' weights only, not
    on where they are stored; None where the stored order cannot matter (g = 1, or variant `single`,
    whose head mode is not compressed).

    The block mode of the GQA-aware tensor (and TRAWL's) holds a group's g query and g output heads as
    separate slots that U3 mixes, while every group shares U3: reordering one group's heads (with their
    output heads: the same function) is then no mode permutation and changed the result. Putting each
    group's heads in this order before the tensor is built makes compress(permute(w)) equal
    permute(compress(w)). Order: descending energy ||Q_h||^2 + ||O_h||^2; heads of exactly equal
    energy by their first differing weight (identical heads are interchangeable)."""
    if variant == "single" or w.group == 1:
        return None
    q, _, _, o = per_head_blocks(w)  # (H, D, d) each
    energy = [float(q[h].square().sum() + o[h].square().sum()) for h in range(w.heads)]

    def first(a: int, b: int) -> int:  # negative: head a comes first
        if energy[a] != energy[b]:
            return -1 if energy[a] > energy[b] else 1
        diff = torch.cat([(q[a] - q[b]).flatten(), (o[a] - o[b]).flatten()])  # (2*D*d,)
        nz = torch.nonzero(diff)
        return 0 if nz.numel() == 0 else (-1 if diff[nz[0, 0]] > 0 else 1)

    g, key = w.group, functools.cmp_to_key(first)
    return [h for j in range(w.kv_heads) for h in sorted(range(j * g, (j + 1) * g), key=key)]


def permute_query_heads(w: AttnWeights, order: list[int]) -> AttnWeights:
    """Query head n of the result is head order[n] of `w` (rows of q, bq and qn, columns of o). Within
    each K/V group this is the same function: RoPE and the group's K/V act on all its query heads alike."""
    H, d = w.heads, w.head_dim
    idx = torch.as_tensor(order, device=w.q.device)

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:  # (H*d[, D]) -> the same, heads reordered
        return None if t is None else t.reshape(H, d, *t.shape[1:])[idx.to(t.device)].reshape(t.shape)

    o = w.o.reshape(w.o.shape[0], H, d)[:, idx].reshape(w.o.shape)  # (D, H*d)
    return w.with_(q=rows(w.q), bq=rows(w.bq), qn=rows(w.qn), o=o)


def inverse_order(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


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
        raise UserError(
            f"no ranks reach compression rate {target:g} on this layer (at most {floor:.1f} with all ranks 1)"
        )
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


# ---------------------------------------------------------------- rank settings as users write them


def parse_ranks(text: str | None):
    """'144,48,4' -> (144, 48, 4); '0.5,0.25,1' -> fractions; 'auto' -> 'auto'."""
    if text is None or text == "auto":
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
        return tuple(float(p) for p in parts)
    except ValueError:
        raise UserError(
            f"--ranks '{text}' must be integers (144,48,4), fractions (0.5,0.25,1) or auto"
        ) from None


def parse_rank_settings(text: str) -> list[tuple[int, ...] | tuple[float, ...] | str]:
    """'144,48,4;0.5,0.5,1;auto' -> [(144, 48, 4), (0.5, 0.5, 1.0), 'auto']."""
    out = [parse_ranks(part.strip()) for part in text.split(";") if part.strip()]
    if not out:
        raise UserError(f"--ranks '{text}' holds no rank setting")
    return out


def rank_label(setting) -> str:
    if isinstance(setting, str):
        return setting
    return ",".join(f"{r:g}" if isinstance(r, float) else str(r) for r in setting)
