"""Parse layer selections: `9`, `0,3,7-9`, `all`, `-1` (last), or a list of ints."""

from __future__ import annotations

import re

from tensorllm.base.errors import UserError

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_layers(spec: str | int | tuple | list, n_layers: int) -> list[int]:
    if isinstance(spec, int) and not isinstance(spec, bool):
        items: list = [spec]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        text = str(spec).strip()
        if text == "all":
            return list(range(n_layers))
        items = [part.strip() for part in text.split(",")]
        if len(items) > 1 and not all(items):  # "1,,2" or "9,": a typo, not a shorter list
            raise UserError(f"layers '{text}' has an empty item (use e.g. 9, 0,3,7-9, all)")
        items = [item for item in items if item]
    out: list[int] = []
    for item in items:
        m = _RANGE.match(item) if isinstance(item, str) else None
        if m:  # "a-b", inclusive
            lo, hi = _index(m[1], n_layers), _index(m[2], n_layers)
            if lo > hi:
                raise UserError(f"layer range '{item}' is empty")
            out.extend(range(lo, hi + 1))
        else:
            out.append(_index(item, n_layers))
    if not out:
        raise UserError(f"no layers selected by '{spec}'")
    return sorted(set(out))


def _index(item, n_layers: int) -> int:
    try:
        i = int(item)
    except (TypeError, ValueError):
        raise UserError(f"layer '{item}' is not an integer (use e.g. 9, 0,3,7-9, all)") from None
    j = i + n_layers if i < 0 else i
    if not 0 <= j < n_layers:
        raise UserError(f"layer {i} is out of range (the model has {n_layers} layers: 0..{n_layers - 1})")
    return j


def one_layer_as_list(value):
    """A config's `layers` field: a bare integer becomes a list of one (recipes and reports stay
    uniform); any other form is kept as given and parsed later by `parse_layers`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return value
