"""base/heap.py: the heap frozen while an evaluation runs, so a full collection there does not walk
the model's and the library's objects (a 0.1-0.25 s pause of a warm evaluation otherwise)."""

import gc
import types
import weakref

import pytest

from tensorllm.base import heap
from tensorllm.base.heap import frozen_heap


class _Cycle:
    def __init__(self):
        self.me = self


def _garbage_cycle() -> weakref.ref:
    """A cycle unreachable at once (only the cycle collector frees it), and a way to see it."""
    return weakref.ref(_Cycle())


@pytest.fixture
def manual_collections():
    """No automatic collection during the test: only its own gc.collect() calls free cycles."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


def test_old_objects_are_not_walked_inside_and_are_collectable_after(manual_collections):
    old = _garbage_cycle()
    with frozen_heap():
        assert gc.get_freeze_count() > heap._BASELINE
        new = _garbage_cycle()
        gc.collect()
        assert old() is not None  # frozen: a full collection inside the block leaves it
        assert new() is None  # made inside the block: collected there
    assert gc.get_freeze_count() <= heap._BASELINE
    gc.collect()
    assert old() is None  # back in the collected heap after the block: nothing leaks


def test_nested_blocks_unfreeze_once_at_the_outermost_exit_and_after_errors():
    with frozen_heap():
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > heap._BASELINE  # the inner exit leaves the outer block frozen
    assert gc.get_freeze_count() <= heap._BASELINE
    try:
        with frozen_heap():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() <= heap._BASELINE


def test_a_caller_s_own_freeze_is_left_alone_while_frozen_objects_die(manual_collections):
    """The count of frozen objects drops when one of them dies, so only what stays frozen tells (CI
    of 2026-12-03 failed on a count that had dropped by 2 across the block)."""
    theirs = _garbage_cycle()
    doomed = [[] for _ in range(100)]
    gc.freeze()
    try:
        with frozen_heap():
            assert not heap.frozen_by_block()
            del doomed  # 101 frozen objects die inside the block
        gc.collect()
        assert theirs() is not None  # still frozen after the block: the caller's freeze stands
    finally:
        gc.unfreeze()
    gc.collect()
    assert theirs() is None


def test_the_block_counts_the_frozen_objects_once_at_entry_and_never_at_exit(monkeypatch):
    """Counting walks the permanent generation (the whole heap inside the block); freeze and unfreeze
    move lists in constant time."""
    calls = []

    def counted(name):
        def call():
            calls.append(name)
            return getattr(gc, name)()

        return call

    spy = types.SimpleNamespace(**{n: counted(n) for n in ("get_freeze_count", "freeze", "unfreeze")})
    monkeypatch.setattr(heap, "gc", spy)
    with frozen_heap():
        with frozen_heap():
            pass
    assert calls == ["get_freeze_count", "freeze", "unfreeze"]


def test_a_freeze_taken_inside_the_block_is_undone_at_its_exit(manual_collections):
    """One permanent generation: the block's unfreeze also returns objects someone froze inside it."""
    try:
        with frozen_heap():
            late = _garbage_cycle()
            gc.freeze()
        gc.collect()
        assert late() is None
        assert gc.get_freeze_count() <= heap._BASELINE
    finally:
        gc.unfreeze()


def test_the_interpreter_s_own_frozen_objects_are_not_a_caller_s_freeze(monkeypatch, manual_collections):
    """Python 3.12 starts with objects of its own in the permanent generation; emulated here (3.11
    starts with none) by freezing the heap as it is and calling that the interpreter's baseline."""
    gc.freeze()
    try:
        monkeypatch.setattr(heap, "_BASELINE", gc.get_freeze_count())
        old = _garbage_cycle()  # made after the baseline: the block must freeze it
        with frozen_heap():
            gc.collect()
            assert old() is not None  # the block froze the heap although the count was not 0
        gc.collect()
        assert old() is None  # and returned it at exit
    finally:
        gc.unfreeze()
