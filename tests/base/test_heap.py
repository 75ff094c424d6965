"""base/heap.py: the heap frozen while an evaluation runs, so a full collection there does not walk
the model's and the library's objects (a 0.1-0.25 s pause of a warm evaluation otherwise)."""

import gc
import weakref

from tensorllm.base import heap
from tensorllm.base.heap import frozen_heap


class _Cycle:
    def __init__(self):
        self.me = self


def _garbage_cycle() -> weakref.ref:
    """A cycle unreachable at once (only the cycle collector frees it), and a way to see it."""
    return weakref.ref(_Cycle())


def test_old_objects_are_not_walked_inside_and_are_collectable_after():
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        old = _garbage_cycle()
        with frozen_heap():
            assert gc.get_freeze_count() > 0
            new = _garbage_cycle()
            gc.collect()
            assert old() is not None  # frozen: a full collection inside the block leaves it
            assert new() is None  # made inside the block: collected there
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert old() is None  # back in the collected heap after the block: nothing leaks
    finally:
        if was_enabled:
            gc.enable()


def test_nested_blocks_unfreeze_once_at_the_outermost_exit_and_after_errors():
    with frozen_heap():
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0  # the inner exit leaves the outer block frozen
    assert gc.get_freeze_count() == 0
    try:
        with frozen_heap():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0


def test_a_caller_s_own_freeze_is_left_alone():
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() >= before > 0
    finally:
        gc.unfreeze()


def test_a_freeze_taken_inside_the_block_survives_its_exit():
    try:
        with frozen_heap():
            theirs = [[] for _ in range(10_000)]  # objects made while the block is open ...
            gc.freeze()  # ... frozen by someone else (a library, another thread)
        assert gc.get_freeze_count() >= len(theirs)  # not thrown away by the block's unfreeze
    finally:
        gc.unfreeze()


def test_the_interpreter_s_own_frozen_objects_are_not_a_caller_s_freeze(monkeypatch):
    """Python 3.12 starts with objects of its own in the permanent generation; emulated here (3.11
    starts with none) by freezing the heap as it is and calling that the interpreter's baseline."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        gc.freeze()
        monkeypatch.setattr(heap, "_BASELINE", gc.get_freeze_count())
        old = _garbage_cycle()  # made after the baseline: the block must freeze it
        with frozen_heap():
            gc.collect()
            assert old() is not None  # the block froze the heap although the count was not 0
        gc.collect()
        assert old() is None  # and returned it at exit
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
