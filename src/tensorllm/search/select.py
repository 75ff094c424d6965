"""LASER's selection rule: highest validation accuracy; ties go to the lower validation loss.

Remaining ties keep grid order (row by row), so the choice is deterministic. A missing or NaN
accuracy ranks last; a missing or non-finite loss loses every tie. Tasks without an accuracy
(perplexity) are ranked by loss alone.

`by` selects on another metric of the store lines (`--select-by`, tensorllm.eval.metrics.SELECT_BY:
`faithful`, `continuation`, `exact` containment / match, or `loss`); ties still go to the lower loss.
"""

from __future__ import annotations

import math

from tensorllm.eval.metrics import LOWER_IS_BETTER


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def value(result: dict, by: str = "accuracy"):
    """The metric `by` of one result line (None when the line does not carry it)."""
    if by in ("accuracy", "loss"):
        return result.get(by)
    return (result.get("metrics") or {}).get(by)


def score(result: dict, by: str = "accuracy") -> tuple[float, float]:
    """Sort key (smaller is better) of one result line: (-accuracy, loss), or (-metric, loss)."""
    v, loss = value(result, by), result.get("loss")
    primary = (v if by in LOWER_IS_BETTER else -v) if _finite(v) else math.inf
    return (primary, loss if _finite(loss) else math.inf)


def rank(results: list[dict], by: str = "accuracy") -> list[dict]:
    """Results best first; `sorted` is stable, so full ties keep their input (grid) order."""
    return sorted(results, key=lambda r: score(r, by))


def best(results: list[dict], by: str = "accuracy") -> dict:
    if not results:
        raise ValueError("no results to select from")
    return rank(results, by)[0]


def rule(by: str = "accuracy") -> str:
    """The selection rule in words, as reports state it."""
    if by == "accuracy":
        return "highest validation accuracy; ties: lower validation loss; then grid order"
    if by in LOWER_IS_BETTER:
        return f"lowest validation {by}; then grid order"
    return f"highest validation {by}; ties: lower validation loss; then grid order"
