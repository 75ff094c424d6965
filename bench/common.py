"""Shared by the bench scripts (run as `python bench/<script>.py`, so this folder is on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path


def emit_json(result: dict, out: Path | None, *, quiet: bool = False) -> None:
    """Print the result as JSON (unless quiet), and write it to `out` too when given (atomically)."""
    text = json.dumps(result, indent=2)
    if not quiet:
        print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
