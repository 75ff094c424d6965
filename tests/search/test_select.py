"""The selection rule: highest validation accuracy, ties by lower validation loss, then grid order."""

import math

from tensorllm.search import select


def r(key, acc, loss):
    return {"key": key, "accuracy": acc, "loss": loss}


def test_highest_accuracy_wins_even_with_higher_loss():
    assert select.best([r("a", 50.0, 1.0), r("b", 60.0, 9.0)])["key"] == "b"


def test_accuracy_tie_goes_to_lower_loss():
    results = [r("a", 60.0, 3.0), r("b", 60.0, 2.5), r("c", 40.0, 0.1)]
    assert [x["key"] for x in select.rank(results)] == ["b", "a", "c"]


def test_full_tie_keeps_grid_order():
    assert [x["key"] for x in select.rank([r("a", 60.0, 2.0), r("b", 60.0, 2.0)])] == ["a", "b"]


def test_nan_and_missing_rank_last():
    results = [
        r("nan_acc", math.nan, 0.1),
        r("nan_loss", 60.0, math.nan),
        r("ok", 60.0, 5.0),
        r("none", None, 1.0),
    ]
    assert [x["key"] for x in select.rank(results)] == ["ok", "nan_loss", "nan_acc", "none"]


def test_perplexity_task_ranks_by_loss():
    assert select.best([r("a", None, 3.0), r("b", None, 2.0)])["key"] == "b"
