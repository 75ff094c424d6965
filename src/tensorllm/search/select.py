"""LASER's selection rule: highest validation accuracy; ties go to the lower validation loss.

Remaining ties keep grid order (row by row), so the choice is deterministic. A missing or NaN
accuracy ranks last; a missing or non-finite loss loses every tie. Tasks without an accuracy
(perplexity) are ranked by loss alone.
"""

from __future__ import annotations

import math


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def score(result: dict) -> tuple[float, float]:
    """Sort key (smaller is better) of one result line: (-accuracy, loss)."""
    acc = result.get("accuracy")
    loss = result.get("loss")
    return (-acc if _finite(acc) else math.inf, loss if _finite(loss) else math.inf)


def rank(results: list[dict]) -> list[dict]:
    """Results best first; `sorted` is stable, so full ties keep their input (grid) order."""
    return sorted(results, key=score)


def best(results: list[dict]) -> dict:
    if not results:
        raise ValueError("no results to select from")
    return rank(results)[0]
