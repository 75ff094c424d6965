"""The store: append-only JSONL per rank, torn-line handling, merge/dedup, refuse-to-mix, locks."""

import json

import pytest

from tensorllm.base.errors import UserError
from tensorllm.search.identity import IDENTITY_KEYS
from tensorllm.search.store import Store

IDENT = {k: f"v-{k}" for k in IDENTITY_KEYS if k != "method_versions"}  # a dict; see the last test


def line(key, split="val", acc=50.0):
    return {"key": key, "split": split, "accuracy": acc, "loss": 1.0, "n": 4}


def test_append_read_and_merge_ranks(tmp_path):
    store = Store(tmp_path / "s")
    store.open(IDENT, {})
    w0, w1 = store.writer(0), store.writer(1)
    w0.append(line("a"))
    w1.append(line("b"))
    w1.append(line("a", acc=99.0))  # a duplicate: the first line (rank 0's file) wins
    w0.append(line("a", split="test"))
    w0.close(), w1.close()
    val = store.results("val")
    assert sorted(val) == ["a", "b"] and val["a"]["accuracy"] == 50.0
    assert list(store.results("test")) == ["a"]
    assert len(store.results()) == 3


def test_torn_last_line_is_ignored_then_cut_by_the_next_writer(tmp_path):
    store = Store(tmp_path / "s")
    store.open(IDENT, {})
    w = store.writer(0)
    w.append(line("a"))
    w.close()
    path = tmp_path / "s" / "results-rank0.jsonl"
    with open(path, "ab") as f:  # what a SIGKILL in the middle of a write leaves behind
        f.write(json.dumps(line("b")).encode()[:25])
    assert list(store.results("val")) == ["a"]
    w = store.writer(0)
    w.append(line("c"))
    w.close()
    assert list(store.results("val")) == ["a", "c"]
    assert path.read_text().count("\n") == 2


def test_a_complete_line_without_newline_does_not_count(tmp_path):
    store = Store(tmp_path / "s")
    store.open(IDENT, {})
    (tmp_path / "s" / "results-rank3.jsonl").write_text(json.dumps(line("x")))
    assert store.results("val") == {}


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    store = Store(tmp_path / "s")
    store.open(IDENT, {})
    (tmp_path / "s" / "results-rank0.jsonl").write_text('{"key": "a"\n' + json.dumps(line("b")) + "\n")
    with pytest.raises(UserError, match="line 1 is corrupt"):
        store.results("val")


def test_refuses_a_store_of_another_search(tmp_path):
    first = Store(tmp_path / "s")
    first.open(IDENT, {})
    first.close()
    other = {**IDENT, "task": "fever", "limit_val": 100}
    with pytest.raises(UserError) as exc:
        Store(tmp_path / "s").open(other, {})
    msg = str(exc.value)
    assert "\n" not in msg and "different search" in msg and "task" in msg and "limit_val" in msg


def test_same_identity_reopens(tmp_path):
    s = Store(tmp_path / "s")
    s.open(IDENT, {"created": 1})
    s.close()
    Store(tmp_path / "s").open(IDENT, {"created": 2})  # info may differ
    assert json.loads((tmp_path / "s" / "store.json").read_text())["info"] == {"created": 1}


def test_one_search_per_store(tmp_path):
    first = Store(tmp_path / "s")
    first.open(IDENT, {})
    with pytest.raises(UserError, match="another search is running"):
        Store(tmp_path / "s").open(IDENT, {})
    first.close()
    Store(tmp_path / "s").open(IDENT, {})  # free again


def test_one_writer_per_rank_file(tmp_path):
    store = Store(tmp_path / "s")
    store.open(IDENT, {})
    w = store.writer(0)
    with pytest.raises(UserError, match="another search is writing"):
        store.writer(0)
    w.close()


def test_non_empty_directory_without_manifest_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="non-empty directory"):
        Store(tmp_path / "s").open(IDENT, {})


def test_results_of_an_older_method_version_are_refused(tmp_path):
    """A store keeps results by canonical step; when a method's results change for the same step
    (tucker v2: each group's query heads in canonical order), a store made before is refused in one
    line instead of mixing old and new results. A store without versions holds version 1 results."""
    from tensorllm.search.identity import method_versions

    now = method_versions("tucker")
    assert now == {"tucker": 2}
    assert method_versions("laser") == {"laser": 1}
    old = Store(tmp_path / "old")
    old.open({**IDENT, "method": "tucker"}, {})  # made before versions existed: no method_versions
    old.close()
    with pytest.raises(UserError) as exc:
        Store(tmp_path / "old").open({**IDENT, "method": "tucker", "method_versions": now}, {})
    msg = str(exc.value)
    assert "\n" not in msg and "tucker results v1 in the store, v2 now" in msg
    laser = Store(tmp_path / "laser")
    laser.open({**IDENT, "method": "laser"}, {})
    laser.close()
    Store(tmp_path / "laser").open({**IDENT, "method": "laser", "method_versions": {"laser": 1}}, {})
