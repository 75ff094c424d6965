"""Equal-size grouping by swap search: finds planted groups, deterministic, never worse than contiguous."""

import itertools

import pytest
import torch

from tensorllm.methods.gqa.grouping import contiguous, objective, partition


def _planted(n, groups, noise, seed):
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    label = torch.empty(n, dtype=torch.long)
    label[perm] = torch.arange(n) % groups
    S = noise * torch.rand(n, n, generator=gen, dtype=torch.float64)
    S = (S + S.T) / 2 + (label[:, None] == label[None, :]).double()
    S.fill_diagonal_(0)
    truth = sorted(sorted(int(h) for h in (label == g).nonzero().flatten()) for g in range(groups))
    return S, truth


@pytest.mark.parametrize("n,groups,seed", [(9, 3, 0), (32, 8, 1), (32, 4, 2), (64, 8, 3), (12, 6, 4)])
def test_recovers_planted_groups(n, groups, seed):
    S, truth = _planted(n, groups, noise=0.9, seed=seed)
    found = partition(S, groups, seed=seed)
    assert found == truth
    assert all(len(g) == n // groups for g in found)


def test_matches_exhaustive_search_on_a_random_matrix():
    gen = torch.Generator().manual_seed(5)
    S = torch.rand(8, 8, generator=gen, dtype=torch.float64)
    S = (S + S.T) / 2
    best = float("-inf")
    for first in itertools.combinations(range(1, 8), 3):  # head 0's group, then the rest is the other group
        labels = torch.ones(8, dtype=torch.long)
        labels[[0, *first]] = 0
        best = max(best, objective(S, labels))
    found = partition(S, 2, seed=0)
    labels = torch.zeros(8, dtype=torch.long)
    labels[found[1]] = 1
    assert objective(S, labels) == pytest.approx(best)


def test_deterministic_and_no_worse_than_contiguous():
    gen = torch.Generator().manual_seed(6)
    S = torch.rand(24, 24, generator=gen, dtype=torch.float64)
    S = (S + S.T) / 2
    a, b = partition(S, 6, seed=11), partition(S, 6, seed=11)
    assert a == b

    def score(groups):
        labels = torch.empty(24, dtype=torch.long)
        for g, members in enumerate(groups):
            labels[members] = g
        return objective(S, labels)

    assert score(a) >= score(contiguous(24, 6))


def test_unequal_split_is_refused():
    with pytest.raises(ValueError):
        partition(torch.zeros(10, 10), 3)
