"""The Python heap frozen while an evaluation runs.

A warm full-WikidataQA evaluation makes ~100,000 short-lived lists (token ids, spans, texts); now and
then that triggers one of Python's full (generation-2) collections, which walks every tracked object
of the process: torch's and transformers' modules, the tokenizer memo. On the H200 such a pause took
0.23-0.35 s of a 1.6-2.1 s evaluation (bench/results/first_token_loss_h200/), on this project's CPU
0.13-0.16 s of a 0.03 s tokenise step (bench/results/frozen_heap_cpu/). Inside `frozen_heap()` the
objects that existed at entry are in the permanent generation (`gc.freeze`), so a collection there
walks only the block's own objects; at exit they go back to the collected heap (`gc.unfreeze`), so
nothing leaks. Reference counting frees what it always frees; the cycle collector still runs for the
block's objects.

Python 3.12 starts with a few hundred objects of its own in the permanent generation (375 in 3.12.1),
so "nothing frozen" means "no more than at this module's import" (`_BASELINE`); reading it as 0 made
the block a no-op on the GPU machine's Python 3.12 (bench/results/first_token_loss_h200/heap/). The
block's unfreeze also returns those few objects to the collected heap, which costs nothing that shows.
A freeze that is not the block's is left alone: one taken before the block (nothing is frozen or
unfrozen then; one taken before this module was imported looks like the interpreter's own), and
one taken while it runs, by a library or another thread, seen as the permanent generation grown past
the block's own (the heap then stays frozen at exit: Python has one permanent generation, so
unfreezing would also undo theirs; a freeze of fewer objects than died meanwhile goes unseen).
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

_LOCK = threading.Lock()
_DEPTH = 0  # nested blocks: only the outermost freezes and unfreezes
_OWNED = False  # whether the outermost block froze the heap itself (not a caller's own gc.freeze)
_FROZEN = 0  # the freeze count right after that block's gc.freeze
_BASELINE = gc.get_freeze_count()  # the interpreter's own frozen objects (Python >= 3.12: not 0)


@contextmanager
def frozen_heap():
    """Freeze the heap for the block (see the module docstring); a no-op under a caller's own freeze."""
    global _DEPTH, _OWNED, _FROZEN
    with _LOCK:
        if _DEPTH == 0:
            _OWNED = gc.get_freeze_count() <= _BASELINE
            if _OWNED:
                gc.freeze()
                _FROZEN = gc.get_freeze_count()
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _OWNED:
                if gc.get_freeze_count() <= _FROZEN:  # frozen objects that died lower it; a freeze grows it
                    gc.unfreeze()
                _OWNED = False
