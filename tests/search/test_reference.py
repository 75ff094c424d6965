"""The reference path (eval/reference.py): a configuration's loss pass started at its first edited block
from the unedited model's stored hidden states gives the full pass's numbers, the model's blocks come
back as they were, and a search with it stores what a search without it stores."""

import pytest
import torch
from search_helpers import spec_for, store_numbers

from tensorllm.archs import blocks
from tensorllm.eval import evaluate
from tensorllm.eval.evaluate import capture_reference
from tensorllm.eval.reference import Reference, ReferencePath
from tensorllm.models.io import load_model
from tensorllm.search import Store, run_search


@pytest.fixture()
def loaded(search_tiny):
    loaded = load_model(search_tiny["model"], device="cpu", dtype="float32")
    loaded.model.double()  # float64: the fast and the full pass agree to 1e-9
    return loaded


def _scaled(block, scale):
    with torch.no_grad():
        for p in block.parameters():
            if p.ndim == 2:
                p.mul_(scale)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_the_loss_from_the_stored_states_is_the_full_pass_loss(loaded, search_tiny, layer):
    model, tok = loaded.model, loaded.tokenizer
    ref = Reference(blocks(model, loaded.arch))
    kw = dict(data=search_tiny["data"], split="all", batch_size=7, progress=False)
    base = evaluate(model, tok, "wikidata_qa", reference=ReferencePath(ref, 0, None), **kw)
    # stored: the two-token answers' items only (a one-token answer's loss comes from the generation)
    assert sorted(ref.states) == [i for i in range(base.n) if i % 4 == 3] and ref.nbytes() > 0
    assert ref.covered == set(range(base.n))
    before = list(blocks(model, loaded.arch))
    _scaled(blocks(model, loaded.arch)[layer], 1.3)  # an edit of block `layer` only
    fast = evaluate(model, tok, "wikidata_qa", reference=ReferencePath(ref, 0, layer), **kw)
    full = evaluate(model, tok, "wikidata_qa", **kw)
    assert list(blocks(model, loaded.arch)) == before  # the pass-throughs are gone again
    assert fast.items["faithful"] == full.items["faithful"]
    assert fast.items["nll"] == pytest.approx(full.items["nll"], abs=1e-9)
    assert abs(full.loss - base.loss) > 1e-3  # the edit changed the loss: the check above can fail


def test_a_wrong_start_layer_gives_another_loss(loaded, search_tiny):
    """Starting above the edited block skips the edit: the stored states are then not the edited model's,
    so the loss differs (the test above would catch a reference that ignored `layer`)."""
    model, tok = loaded.model, loaded.tokenizer
    ref = Reference(blocks(model, loaded.arch))
    kw = dict(data=search_tiny["data"], split="all", batch_size=7, progress=False)
    evaluate(model, tok, "wikidata_qa", reference=ReferencePath(ref, 0, None), **kw)
    _scaled(blocks(model, loaded.arch)[0], 1.3)
    wrong = evaluate(model, tok, "wikidata_qa", reference=ReferencePath(ref, 0, 1), **kw)
    full = evaluate(model, tok, "wikidata_qa", **kw)
    assert abs(wrong.loss - full.loss) > 1e-3


def test_a_failed_pass_restores_the_blocks(loaded, search_tiny):
    model = loaded.model
    ref = Reference(blocks(model, loaded.arch))
    capture_reference(
        model,
        loaded.tokenizer,
        "wikidata_qa",
        ReferencePath(ref, 0, None),
        "all",
        span=(0, 4),
        data=search_tiny["data"],
    )
    before = list(blocks(model, loaded.arch))
    with pytest.raises(RuntimeError, match="boom"):
        with ref.start_at(2, [3], 12):  # item 3: a two-token answer, so its path is stored
            raise RuntimeError("boom")
    assert list(blocks(model, loaded.arch)) == before
    assert not any(b._forward_pre_hooks for b in before)


def _lines(store) -> dict:
    """{(key, split, part): (accuracy, loss, n)}: a racing store holds several parts of one key."""
    out = {}
    for line in Store(store).lines():
        out[(line["key"], line["split"], tuple(line.get("part") or ()))] = (
            line["accuracy"],
            line["loss"],
            line["n"],
        )
    return out


def test_a_search_stores_the_same_numbers_with_and_without_it(search_tiny, tmp_path):
    kw = dict(layers="0,1,2", limit_val=12, exhaustive=False, race_first=4)
    with_ref = run_search(spec_for(search_tiny, tmp_path / "on", **kw))
    without = run_search(spec_for(search_tiny, tmp_path / "off", reference=False, **kw))
    on, off = _lines(tmp_path / "on"), _lines(tmp_path / "off")
    assert on.keys() == off.keys()
    for k in on:
        assert on[k][0] == off[k][0] and on[k][2] == off[k][2], k
        assert on[k][1] == pytest.approx(off[k][1], rel=1e-5), k
    assert with_ref["roles"]["winner"]["key"] == without["roles"]["winner"]["key"]
    assert any(part for _, _, part in on)  # the race sliced the split


def test_a_resumed_search_captures_the_path_without_the_baseline(search_tiny, tmp_path, monkeypatch):
    """The baseline's scores are in the store, so it is not evaluated again; the path of the items is
    captured (loss pass only) before the first configuration, and the numbers are those of a search
    without it."""
    import sys

    ev = sys.modules["tensorllm.eval.evaluate"]  # the package's `evaluate` attribute is the function
    calls = []
    real = ev.capture_reference
    monkeypatch.setattr(ev, "capture_reference", lambda *a, **k: calls.append(k["span"]) or real(*a, **k))
    kw = dict(layers="1,2", limit_val=12)
    store = tmp_path / "store"
    run_search(spec_for(search_tiny, store, layers="1", reference=False, limit_val=12))
    run_search(spec_for(search_tiny, store, **kw))  # resumes: layer 2's cells are new
    assert len(calls) == 1 and calls[0][0] == 0  # once, all of the validation items
    run_search(spec_for(search_tiny, tmp_path / "plain", reference=False, **kw))
    got, want = store_numbers(store), store_numbers(tmp_path / "plain")
    val = [k for k in want if k[1] == "val"]
    assert val and all(k in got for k in val)
    for k in val:
        assert got[k][0] == want[k][0] and got[k][1] == pytest.approx(want[k][1], rel=1e-5), k
