"""Argument checks shared by the pure tensor functions."""

from __future__ import annotations

import numbers


def is_int(v: object) -> bool:
    """An integer of any integral type (Python, NumPy), but not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
