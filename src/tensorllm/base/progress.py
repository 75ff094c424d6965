"""Terminal output: progress bars for long loops (rich on a terminal, silent otherwise) and the
console that prints result tables."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stderr
from typing import TypeVar

T = TypeVar("T")


def track(
    items: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None
) -> Iterator[T]:
    """Yield `items` with a progress bar (count, elapsed, ETA) on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield from items
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def output_console():
    """Console for result tables: the terminal's width, or 200 columns into a file or pipe (a log
    has no reason to squeeze a table into 80 columns and cut its numbers)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


@contextmanager
def quiet_stderr(enabled: bool = True) -> Iterator[None]:
    """Send stderr to /dev/null unless it is a terminal, for library calls that draw progress bars
    unconditionally (transformers' GGUF loader): in a log or pipe an error must stay the only line."""
    if not enabled or sys.stderr.isatty():
        yield
        return
    with open(os.devnull, "w") as sink, redirect_stderr(sink):
        yield


def stderr_log(prefix: str = "") -> Callable[[str], None]:
    """A logger printing `prefix + message` lines to stderr, flushed (progress of long runs)."""

    def log(msg: str) -> None:
        print(f"{prefix}{msg}", file=sys.stderr, flush=True)

    return log


def fmt_seconds(s: float) -> str:
    """62 -> '1m02s'; 3720 -> '1h02m'."""
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
