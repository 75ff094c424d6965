"""Whole-model budgets (`--layers all --budget F`): per-layer ranks allocated globally, not one rank for all.

Each unit (one layer's Tucker tensor, or one LASER matrix) has an error curve: for Tucker the HOSVD
bound `sum_n sum_{i > R_n} sigma_i(X_(n))^2` (squared singular values of each mode's unfolding beyond
its rank; the error of the truncated HOSVD that starts HOOI, an upper bound of HOOI's), for LASER the
exact Eckart-Young tail `sum_{i > k} sigma_i^2`, against the parameters kept (the paper's partial
Tucker count, `k (m + n)`). The allocation minimises the total squared error with the total kept
parameters at most F times the dense ones: a Lagrangian relaxation, each unit taking the point of its
curve that minimises `error + lambda * params`, with lambda bisected to the smallest value that fits.
So a layer whose spectrum decays fast gets lower ranks than one whose spectrum is flat.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from tensorllm.base.errors import UserError
from tensorllm.methods.tucker_tensor import singular_values

GRID = 256  # at most this many rank values per mode enter a Tucker curve (every value below it)


def _tails(sq: torch.Tensor) -> torch.Tensor:
    """tails[r] = sum of sq[r:], for r = 0..len(sq) (the error of keeping the first r values)."""
    tails = torch.cumsum(sq.flip(0), 0).flip(0)
    return torch.cat([tails, tails.new_zeros(1)])


def tucker_curve(t: torch.Tensor, modes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(params (n,), error (n,), ranks (n, len(modes))) of a layer tensor's candidate ranks, on the CPU."""
    axes, tails = [], []
    for m in modes:
        size = t.shape[m]
        # (size,), descending; on the CPU whatever device the weights are on: the curve is small and its
        # rank grids are CPU tensors
        sq = singular_values(t.movedim(m, 0).reshape(size, -1).double()).cpu() ** 2
        sq = torch.cat([sq, sq.new_zeros(size - len(sq))])  # a mode larger than the rest: zeros
        step = max(1, math.ceil(size / GRID))
        axes.append(torch.unique(torch.cat([torch.arange(1, size + 1, step), torch.tensor([size])])))
        tails.append(_tails(sq))
    ranks = torch.cartesian_prod(*axes).reshape(-1, len(modes))  # (n, modes)
    err = sum(tail[ranks[:, j]] for j, tail in enumerate(tails))
    untouched = math.prod(s for m, s in enumerate(t.shape) if m not in modes)
    sizes = torch.tensor([t.shape[m] for m in modes], dtype=torch.float64)
    params = (ranks.double() * sizes).sum(1) + ranks.double().prod(1) * untouched
    return params, err, ranks


def matrix_curve(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(params, error, ranks (n, 1)) of every rank 1..min(m, n) of one matrix (LASER)."""
    m, n = w.shape
    sq = torch.linalg.svdvals(w.double()).cpu() ** 2  # on the CPU, as tucker_curve's
    ranks = torch.arange(1, len(sq) + 1)
    return ranks.double() * (m + n), _tails(sq)[ranks], ranks[:, None]


def pareto(params: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """Indices of the points no other point beats on both (ascending params, strictly falling error)."""
    order = torch.argsort(err, stable=True)
    order = order[torch.argsort(params[order], stable=True)]  # by params; ties: lowest error first
    e = err[order]
    before = torch.cat([e.new_full((1,), math.inf), torch.cummin(e, 0).values[:-1]])
    return order[e < before]


def allocate(curves: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], budget: float) -> list[tuple]:
    """The ranks of each curve minimising the total error with total params <= budget (a count): a
    Lagrangian split, then the leftover filled greedily by the best error drop per parameter."""
    fronts = []
    for params, err, ranks in curves:
        keep = pareto(params, err)
        fronts.append((params[keep], err[keep], ranks[keep]))
    floor = sum(p[0].item() for p, _, _ in fronts)
    if floor > budget:
        raise UserError(
            f"the budget keeps {budget:,.0f} parameters, fewer than the smallest ranks need ({floor:,.0f})"
        )

    def pick(lam: float) -> list[int]:
        return [int(torch.argmin(e + lam * p).item()) for p, e, _ in fronts]

    def total(idx: list[int]) -> float:
        return sum(f[0][i].item() for f, i in zip(fronts, idx))

    lo, hi = 0.0, max(max(e[0].item() for _, e, _ in fronts) / max(budget, 1.0), 1e-30)
    while total(pick(hi)) > budget:  # a large enough lambda: every unit at its smallest point
        hi *= 4
    best = pick(lo)
    if total(best) > budget:
        for _ in range(100):  # bisect (log scale once lo > 0) to the smallest lambda that fits
            mid = (lo + hi) / 2 if lo == 0 else math.sqrt(lo * hi)
            lo, hi = (lo, mid) if total(pick(mid)) <= budget else (mid, hi)
            if lo and hi / lo < 1 + 1e-12:
                break
        best = pick(hi)
    left = budget - total(best)
    while True:  # greedy fill: a Lagrangian jumps over the points of a straight stretch of a curve
        gain, move = 0.0, None
        for u, (p, e, _) in enumerate(fronts):
            i = best[u]
            cost, drop = p[i + 1 :] - p[i], e[i] - e[i + 1 :]
            ok = cost <= left
            if ok.any():
                ratio = torch.where(ok, drop / cost, torch.zeros_like(drop))
                j = int(torch.argmax(ratio))
                if ratio[j].item() > gain:
                    gain, move = ratio[j].item(), (u, i + 1 + j)
        if move is None:
            break
        u, j = move
        left -= (fronts[u][0][j] - fronts[u][0][best[u]]).item()
        best[u] = j
    return [tuple(int(r) for r in f[2][i].tolist()) for f, i in zip(fronts, best)]


def tucker_budget_ranks(
    tensors: Iterable[torch.Tensor], modes: tuple[int, ...], fraction: float
) -> list[tuple]:
    """Per-layer ranks keeping `fraction` of the layers' dense parameters (one tensor at a time in memory)."""
    curves, dense = [], 0
    for t in tensors:
        curves.append(tucker_curve(t, modes))
        dense += t.numel()
    return allocate(curves, fraction * dense)


def laser_budget_ranks(matrices: Iterable[torch.Tensor], fraction: float) -> list[int]:
    """Per-matrix LASER ranks keeping `fraction` of the matrices' parameters."""
    curves, dense = [], 0
    for w in matrices:
        curves.append(matrix_curve(w))
        dense += w.numel()
    return [r[0] for r in allocate(curves, fraction * dense)]
