"""Paired statistics (search/stats.py): McNemar's exact p, the bootstrap interval, compare()."""

import math

import numpy as np
import pytest

from tensorllm.search import stats


def line(bits: str, nll=None, mode="faithful"):
    return {
        "n": len(bits),
        "eval": {"metric": "generate-substring", "answer_mode": mode},
        "items": {"faithful": bits, "continuation": bits, "exact": bits, "nll": nll or [1.0] * len(bits)},
    }


def test_exact_binomial_tails():
    assert stats.binom_tail_two_sided(0, 0) == 1.0
    assert stats.binom_tail_two_sided(1, 10) == pytest.approx(2 * 11 / 1024)
    assert stats.binom_tail_two_sided(9, 10) == stats.binom_tail_two_sided(1, 10)
    assert stats.binom_tail_two_sided(5, 10) == 1.0
    assert stats.binom_upper_tail(10, 10) == pytest.approx(1 / 1024)
    assert stats.binom_upper_tail(0, 10) == 1.0 and stats.binom_upper_tail(11, 10) == 0.0
    assert stats.binom_upper_tail(6, 10) == pytest.approx(sum(math.comb(10, i) for i in range(6, 11)) / 1024)
    assert stats.binom_tail_two_sided(100, 5000) < 1e-100  # exact integers: no overflow, no NaN


def test_mcnemar_counts_the_discordant_items():
    a, b = stats.as_bits("1101001"), stats.as_bits("1011000")
    only_a, only_b, p = stats.mcnemar(a, b)
    assert (only_a, only_b) == (2, 1) and p == pytest.approx(1.0)


def test_compare_a_clear_gain_and_a_tie():
    rng = np.random.default_rng(1)
    base = rng.random(2000) < 0.2
    better = base | (rng.random(2000) < 0.1)  # ~8 points more, only ever gains
    as_str = lambda v: "".join("1" if x else "0" for x in v)  # noqa: E731
    cmp = stats.compare(line(as_str(better)), line(as_str(base)), "accuracy")
    assert cmp["delta"] == pytest.approx(100 * (better.sum() - base.sum()) / 2000)
    assert cmp["only_b"] == 0 and cmp["p"] < 1e-30 and cmp["distinguishable"]
    lo, hi = cmp["ci95"]
    assert 0 < lo < cmp["delta"] < hi and hi - lo < 4
    tie = stats.compare(line(as_str(base)), line(as_str(base)), "exact")
    assert tie["delta"] == 0 and tie["p"] == 1.0 and not tie["distinguishable"] and tie["ci95"] == [0, 0]


def test_compare_loss_uses_the_interval():
    a = line("0" * 400, nll=[2.0 + 0.01 * (i % 7) for i in range(400)])
    b = line("0" * 400, nll=[2.5 + 0.01 * (i % 5) for i in range(400)])
    cmp = stats.compare(a, b, "loss")
    assert cmp["p"] is None and cmp["delta"] < 0 and cmp["distinguishable"] and stats.better(cmp)
    assert cmp["ci95"][1] < 0


def test_compare_needs_per_item_results_of_the_same_items():
    assert stats.compare({"n": 3, "eval": {}}, line("101"), "accuracy") is None  # an old store's line
    assert stats.compare(line("101"), line("1010"), "accuracy") is None
    assert stats.compare(None, line("101"), "accuracy") is None


def test_the_bootstrap_is_reproducible():
    assert stats.bootstrap_binary(30, 10, 500) == stats.bootstrap_binary(30, 10, 500)
    d = np.linspace(-1, 2, 300)
    assert stats.bootstrap_mean(d) == stats.bootstrap_mean(d)
