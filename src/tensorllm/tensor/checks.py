"""Argument checks shared by the pure tensor functions."""

from __future__ import annotations

import numbers


def is_int(v: object) -> bool:
    """An integer of any integral type (Python, NumPy), but not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_mode(mode: int, ndim: int) -> int:
    if not is_int(mode) or not -ndim <= mode < ndim:
        raise ValueError(f"mode {mode!r} is not a mode of a {ndim}-way tensor")
    return int(mode) % ndim
