"""Pure math: split n heads into G equal groups maximising the summed within-group similarity.

Swap-based local search (best improving swap of two heads in different groups until none
improves) from several seeded random starts plus one greedy start; the best partition wins.
Deterministic for a given seed. For the sizes that occur (n <= 128) each search is a few
hundred small (n x n) array operations, done in NumPy (cheaper than torch at this size).
"""

from __future__ import annotations

import numpy as np
import torch


def objective(S, labels) -> float:
    """Sum over groups of the similarity of every unordered pair inside the group."""
    S, labels = np.asarray(S, dtype=np.float64), np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    return float((S * same).sum() / 2)


def _local_search(S: np.ndarray, labels: np.ndarray, groups: int, max_swaps: int) -> np.ndarray:
    labels = labels.copy()
    n = len(labels)
    tol = 1e-12 * (1 + np.abs(S).max())
    for _ in range(max_swaps):
        P = S @ np.eye(groups)[labels]  # (n, G): P[i, g] = similarity of head i to the members of group g
        own = P[np.arange(n), labels]  # (n,)
        to_other = P[:, labels] - S  # (n, n): i's similarity to j's group without j
        # swap i and j: i joins j's group, j joins i's group
        gain = to_other + to_other.T - own[:, None] - own[None, :]
        gain[labels[:, None] == labels[None, :]] = -np.inf
        i, j = divmod(int(np.argmax(gain)), n)
        if not gain[i, j] > tol:
            break
        labels[i], labels[j] = labels[j], labels[i]
    return labels


def _greedy(S: np.ndarray, groups: int) -> np.ndarray:
    """Seed each group with the most similar free pair, then fill it with the heads closest to it."""
    n = S.shape[0]
    size = n // groups
    labels = np.full(n, -1)
    for g in range(groups):
        free = np.flatnonzero(labels < 0)
        if size == 1:
            labels[free[0]] = g
            continue
        sub = S[np.ix_(free, free)].copy()
        np.fill_diagonal(sub, -np.inf)
        i, j = divmod(int(np.argmax(sub)), len(free))
        members = [int(free[i]), int(free[j])]
        while len(members) < size:
            rest = [int(h) for h in free if int(h) not in members]
            members.append(max(rest, key=lambda h: float(S[h, members].sum())))
        labels[members] = g
    return labels


def partition(
    S: torch.Tensor, groups: int, *, seed: int = 0, restarts: int = 16, max_swaps: int = 10_000
) -> list[list[int]]:
    """Equal-size groups (lists of head indices) maximising `objective`; canonical order.

    S: (n, n) symmetric similarity (diagonal ignored). n must be divisible by `groups`.
    """
    n = S.shape[0]
    if n % groups:
        raise ValueError(f"{n} heads cannot form {groups} equal groups")
    S = torch.as_tensor(S).detach().to("cpu", torch.float64).numpy().copy()
    np.fill_diagonal(S, 0)
    gen = torch.Generator().manual_seed(seed)  # torch's generator: the same starts on every platform
    base = np.arange(n) % groups
    starts = [_greedy(S, groups)] + [base[torch.randperm(n, generator=gen).numpy()] for _ in range(restarts)]
    best, best_val = None, float("-inf")
    for start in starts:
        labels = _local_search(S, start, groups, max_swaps)
        val = objective(S, labels)
        if val > best_val + 1e-12:
            best, best_val = labels, val
    return sorted(sorted(int(h) for h in np.flatnonzero(best == g)) for g in range(groups))


def contiguous(n: int, groups: int) -> list[list[int]]:
    """The classic GQA grouping: heads 0..m-1, m..2m-1, ..."""
    m = n // groups
    return [list(range(g * m, (g + 1) * m)) for g in range(groups)]
