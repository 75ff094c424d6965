"""Pure math: the grouping's score of every pair of heads, from streamed cross products.

Reference: Jin et al., "Align Attention Heads Before Merging Them" (arXiv 2412.20677), which groups
heads by the similarity of their keys or values over calibration tokens. For heads i, j with
activations a_i(t), a_j(t) (d,) over N tokens, after the best allowed alignment T (align.py):

    energy    max_T sum_t <a_i, T a_j> / sqrt(E_i E_j),  E_i = sum_t ||a_i||^2
              (the cosine of the whole sequences: loud tokens weigh more; tensorllm's first metric)
    cosine    max_T (1/N) sum_t <u_i, T u_j>,  u = a / ||a|| per token (0 where a = 0)
              (every token weighs the same; the paper's per-token cosine)
    distance  -sqrt(min_T (1/N) sum_t ||a_i - T a_j||^2) = -sqrt((E_i + E_j - 2 max_T tr(T C_ji)) / N)

The same T maximises the cosine's sum and minimises the squared distance, so each is one `best_score`
of a (d, d) cross product: `energy` and `distance` need only C = sum_t a a^T (from the input second
moment, calibrate.cross_products), `cosine` the cross product of the per-token unit vectors, which is
not a function of the input's second moment: `unit_cross_products` accumulates it batch by batch.
"""

from __future__ import annotations

import torch

from tensorllm.methods.gqa import align as A

METRICS = ("energy", "cosine", "distance")


def unit_heads(acts: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(N, heads*d) activations -> the same with every head's d-vector scaled to unit length (0 stays 0)."""
    a = acts.reshape(-1, heads, head_dim)  # (N, n, d)
    norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True)  # (N, n, 1)
    u = torch.where(norm > 0, a / norm.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(a))
    return u.reshape(acts.shape)  # (N, n*d)


def unit_cross_products(acts: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """sum_t u(t) u(t)^T over the N rows of `acts` (N, n*d), u per head unit length: (n*d, n*d)."""
    u = unit_heads(acts, heads, head_dim)
    return u.T @ u


def _pair_scores(blocks: torch.Tensor, planes: A.Planes | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper-triangle index (2, P), max_T tr(T C_ij) for each pair i < j (P,)); planes=None: T = I."""
    n = blocks.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=blocks.device)
    pair = blocks[iu[0], iu[1]]  # (P, d, d)
    if planes is None:
        return iu, torch.diagonal(pair, dim1=-2, dim2=-1).sum(-1)
    return iu, A.best_score(pair, planes)


def _symmetric(iu: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    S = torch.zeros(n, n, dtype=values.dtype, device=values.device)
    S[iu[0], iu[1]] = values
    return S + S.T  # (n, n), 0 on the diagonal


def mean_cosine(unit_blocks: torch.Tensor, tokens: float, planes: A.Planes | None) -> torch.Tensor:
    """(n, n) mean per-token cosine after the best alignment, from unit_blocks (n, n, d, d) =
    sum_t u_i u_j^T over `tokens` tokens; 0 on the diagonal."""
    iu, score = _pair_scores(unit_blocks, planes)
    return _symmetric(iu, score / max(float(tokens), 1.0), unit_blocks.shape[0])


def neg_distance(blocks: torch.Tensor, tokens: float, planes: A.Planes | None) -> torch.Tensor:
    """(n, n) minus the root mean squared distance of every pair after the best alignment, from blocks
    (n, n, d, d) = sum_t a_i a_j^T over `tokens` tokens; 0 on the diagonal."""
    energy = torch.diagonal(blocks, dim1=-2, dim2=-1).sum(-1).diagonal()  # (n,)
    iu, score = _pair_scores(blocks, planes)
    sq = (energy[iu[0]] + energy[iu[1]] - 2 * score).clamp_min(0) / max(float(tokens), 1.0)
    return _symmetric(iu, -sq.sqrt(), blocks.shape[0])


def pair_similarity(
    metric: str,
    blocks: torch.Tensor,
    unit_blocks: torch.Tensor | None,
    tokens: float,
    planes: A.Planes | None,
) -> torch.Tensor:
    """(n, n) score of every pair under `metric` (METRICS); `unit_blocks` is needed by "cosine" only."""
    if metric == "energy":
        return A.similarity(blocks, planes)
    if metric == "cosine":
        if unit_blocks is None:
            raise ValueError("the per-token cosine needs the unit vectors' cross products")
        return mean_cosine(unit_blocks, tokens, planes)
    if metric == "distance":
        return neg_distance(blocks, tokens, planes)
    raise ValueError(f"unknown grouping metric {metric!r}")


def expand_unit_blocks(unit: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """Unit-vector cross products of m own heads ((m*d, m*d)) as the blocks (n, n, d, d) of n >= m heads,
    head h being own head h // (n / m) (the multi-head view of a GQA layer; n = m: just the blocks)."""
    m = unit.shape[0] // d
    own = (torch.arange(n, device=unit.device) // (n // m))[:, None] * d + torch.arange(d, device=unit.device)
    idx = own.reshape(-1)  # (n*d,): row of `unit` for each of the n heads' d dimensions
    return A.cross_blocks(unit[idx[:, None], idx], n, d)


def grouping_scores(
    metric: str,
    on: str,
    blocks: tuple[torch.Tensor, torch.Tensor],
    units: tuple[torch.Tensor | None, torch.Tensor | None],
    tokens: float,
    planes: tuple[A.Planes | None, A.Planes | None],
) -> torch.Tensor:
    """(n, n) the grouping's scores: the keys' (on="keys"), the values' ("values") or their sum ("both").

    blocks / units / planes: (keys', values') cross blocks (n, n, d, d), unit-vector cross blocks (cosine
    only) and allowed alignments (None: no alignment), over `tokens` tokens."""
    parts = [
        pair_similarity(metric, C, U, tokens, pl)
        for which, C, U, pl in zip(("keys", "values"), blocks, units, planes)
        if on in (which, "both")
    ]
    if not parts:
        raise ValueError(f"unknown grouping_on {on!r}")
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]
