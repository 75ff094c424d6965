"""The Python heap frozen while an evaluation runs.

A warm full-WikidataQA evaluation makes ~100,000 short-lived lists (token ids, spans, texts); now and
then that triggers one of Python's full (generation-2) collections, which walks every tracked object
of the process: torch's and transformers' modules, the tokenizer memo. On the H200 such a pause took
0.21-0.37 s of a 1.6-2.1 s evaluation (bench/results/first_token_loss_h200/heap/), on this project's
CPU 0.13-0.16 s of a 0.03 s tokenise step (bench/results/frozen_heap_cpu/). Inside `frozen_heap()` the
objects that existed at entry are in the permanent generation (`gc.freeze`), so a collection there
walks only the block's own objects; at exit they go back to the collected heap (`gc.unfreeze`), so
nothing leaks. Reference counting frees what it always frees; the cycle collector still runs for the
block's objects.

Python 3.12 starts with a few hundred objects of its own in the permanent generation (375 in 3.12.1
and 3.12.3), so "nothing frozen" means "no more than at this module's import" (`_BASELINE`); reading
it as 0 made the block a no-op on the GPU machine's Python 3.12. A caller's own freeze taken before
the block is left alone (the block then freezes and unfreezes nothing); one taken before this module
was imported looks like the interpreter's own, so the block's exit undoes it. `gc.freeze` and
`gc.unfreeze` move whole lists (constant time) but counting the permanent generation walks it, so the
block counts once, at entry, where the count is small unless a caller froze the heap. Counting after
the freeze and at exit, as the first fixed version did to notice a freeze taken inside the block,
cost 31 ms per evaluation on a heap of 0.5 M objects (bench/results/frozen_heap_cpu/); now a
`gc.freeze` called from inside the block is undone by its exit (Python has one permanent generation).
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

_LOCK = threading.Lock()
_DEPTH = 0  # nested blocks: only the outermost freezes and unfreezes
_OWNED = False  # whether the outermost block froze the heap itself (not a caller's own gc.freeze)
_BASELINE = gc.get_freeze_count()  # the interpreter's own frozen objects (Python >= 3.12: not 0)


@contextmanager
def frozen_heap():
    """Freeze the heap for the block (see the module docstring); a no-op under a caller's own freeze."""
    global _DEPTH, _OWNED
    with _LOCK:
        if _DEPTH == 0:
            _OWNED = gc.get_freeze_count() <= _BASELINE  # frozen objects that die lower the count
            if _OWNED:
                gc.freeze()
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _OWNED:
                gc.unfreeze()
                _OWNED = False


def frozen_by_block() -> bool:
    """Whether a `frozen_heap()` block has the heap frozen now (constant time, unlike counting)."""
    return _OWNED
