"""Pure math: split n heads into G equal groups maximising the summed within-group similarity.

Swap-based local search (best improving swap of two heads in different groups until none
improves) from several seeded random starts plus one greedy start; the best partition wins.
Deterministic for a given seed. For the sizes that occur (n <= 128) each search is a few
hundred (n x n) tensor operations.
"""

from __future__ import annotations

import torch


def objective(S: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over groups of the similarity of every unordered pair inside the group."""
    same = labels[:, None] == labels[None, :]
    return float((S * same).sum() / 2)


def _local_search(S: torch.Tensor, labels: torch.Tensor, groups: int, max_swaps: int) -> torch.Tensor:
    labels = labels.clone()
    n = len(labels)
    for _ in range(max_swaps):
        onehot = torch.nn.functional.one_hot(labels, groups).to(S.dtype)  # (n, G)
        P = S @ onehot  # (n, G): P[i, g] = similarity of head i to the members of group g
        own = P[torch.arange(n), labels]  # (n,)
        to_other = P[:, labels]  # (n, n): [i, j] = similarity of i to j's group
        # moving i into j's group and j into i's group (S[i, j] is counted in P but i and j trade places)
        gain = (to_other - S) + (to_other - S).T - own[:, None] - own[None, :]
        gain = gain.masked_fill(labels[:, None] == labels[None, :], float("-inf"))
        best = int(torch.argmax(gain))
        i, j = divmod(best, n)
        if not gain[i, j] > 1e-12 * (1 + S.abs().max()):
            break
        labels[i], labels[j] = labels[j].clone(), labels[i].clone()
    return labels


def _greedy(S: torch.Tensor, groups: int) -> torch.Tensor:
    """Seed each group with the most similar free pair, then fill it with the heads closest to it."""
    n = S.shape[0]
    size = n // groups
    labels = torch.full((n,), -1, dtype=torch.long)
    for g in range(groups):
        free = (labels < 0).nonzero().flatten()
        if size == 1:
            labels[free[0]] = g
            continue
        sub = S[free[:, None], free].clone()
        sub.fill_diagonal_(float("-inf"))
        i, j = divmod(int(torch.argmax(sub)), len(free))
        members = [int(free[i]), int(free[j])]
        while len(members) < size:
            rest = [int(h) for h in free if int(h) not in members]
            k = max(rest, key=lambda h: float(S[h, members].sum()))
            members.append(k)
        labels[members] = g
    return labels


def partition(S: torch.Tensor, groups: int, *, seed: int = 0, restarts: int = 16,
              max_swaps: int = 10_000) -> list[list[int]]:
    """Equal-size groups (lists of head indices) maximising `objective`; canonical order.

    S: (n, n) symmetric similarity (diagonal ignored). n must be divisible by `groups`.
    """
    n = S.shape[0]
    if n % groups:
        raise ValueError(f"{n} heads cannot form {groups} equal groups")
    S = S.detach().to("cpu", torch.float64).clone()
    S.fill_diagonal_(0)
    gen = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % groups
    starts = [_greedy(S, groups)] + [base[torch.randperm(n, generator=gen)] for _ in range(restarts)]
    best, best_val = None, float("-inf")
    for start in starts:
        labels = _local_search(S, start, groups, max_swaps)
        val = objective(S, labels)
        if val > best_val + 1e-12:
            best, best_val = labels, val
    groups_ = [sorted(int(h) for h in (best == g).nonzero().flatten()) for g in range(groups)]
    return sorted(groups_)


def contiguous(n: int, groups: int) -> list[list[int]]:
    """The classic GQA grouping: heads 0..m-1, m..2m-1, ..."""
    m = n // groups
    return [list(range(g * m, (g + 1) * m)) for g in range(groups)]
