"""Other tasks in one search (search/transfer.py): the chosen edit scored on other tasks' test
splits with paired statistics, side effects (perplexity, generations beside the baseline's), and
one setting selected across several tasks by mean validation accuracy. The other tasks' built-in
BIG-bench files are faked with the tiny vocabulary."""

import json
import random

import pytest
from search_helpers import WORDS, spec_for

import tensorllm.search.transfer as transfer
from tensorllm.search import BASELINE, Store, run_search


@pytest.fixture
def fake_bigbench(tmp_path, monkeypatch):
    from tensorllm.data import bigbench as bb
    from tensorllm.eval import sources

    rng = random.Random(1)
    root = tmp_path / "bigbench"
    qa = [
        {"input": f"what is the {rng.choice(['capital', 'color'])} of {a} {b} ? answer :", "target": [t]}
        for a, b, t in (rng.sample(WORDS, 3) for _ in range(60))
    ]
    paras = [{"paragraphs": [{"context": " ".join(rng.choice(WORDS) for _ in range(14))}]} for _ in range(25)]
    for key, doc in (("qa_wikidata", {"examples": qa}), ("paragraphs", {"data": paras})):
        path = root / bb.MEMBERS[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    (root / "manifest.json").write_text(
        json.dumps({"members": [bb.MEMBERS["qa_wikidata"], bb.MEMBERS["paragraphs"]]})
    )
    monkeypatch.setattr(bb, "data_dir", lambda: root)
    sources._load_builtin.cache_clear()
    yield root
    sources._load_builtin.cache_clear()


def test_side_effects_score_the_edit_on_other_tasks(search_tiny, fake_bigbench, tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "SIDE_EFFECT_TASKS", ("perplexity", "wikidata_qa"))  # fever: no true/false
    store = tmp_path / "s"
    rep = run_search(
        spec_for(search_tiny, store, layers="0", ranks=((8, 4, 2), (4, 2, 1)), side_effects=True)
    )
    assert rep["status"] == "complete"
    test_ppl = Store(store).results("test@perplexity")
    assert set(test_ppl) == {BASELINE.key, rep["roles"]["winner"]["key"]}  # wikidata_qa is --task itself
    (row,) = [r for r in rep["tasks"]["rows"] if r["role"] == "winner"]
    assert row["task"] == "perplexity" and row["accuracy"] is None and row["vs_baseline"]["metric"] == "loss"
    base_loss = test_ppl[BASELINE.key]["loss"]
    assert row["vs_baseline"]["delta"] == pytest.approx(row["loss"] - base_loss, abs=1e-3)  # token-weighted
    gens = rep["generations"]
    assert 1 <= len(gens) <= 5 and all(set(g) == {"prompt", "answer", "baseline", "winner"} for g in gens)
    md = (store / "report.md").read_text()
    assert "## Other tasks (the same edits)" in md and "| perplexity | test |" in md
    assert "## Generations (first test items, greedy)" in md
    again = run_search(
        spec_for(search_tiny, store, layers="0", ranks=((8, 4, 2), (4, 2, 1)), side_effects=True)
    )
    assert again["run"]["evaluated_this_run"] == 0  # other tasks' lines resume like the rest


def test_one_setting_selected_across_tasks(search_tiny, fake_bigbench, tmp_path):
    """--task hotpotqa (from --data) and the built-in wikidata_qa: the best mean validation accuracy."""
    rng = random.Random(2)
    hotpot = tmp_path / "hotpot.jsonl"
    hotpot.write_text(
        "".join(
            json.dumps({"question": f"what is the color of {a} {b} ?", "answer": t}) + "\n"
            for a, b, t in (rng.sample(WORDS, 3) for _ in range(50))
        )
    )
    store = tmp_path / "both"
    kw = dict(layers="0,2", ranks=((8, 4, 2), (4, 2, 1)), task="hotpotqa", data=str(hotpot))
    rep = run_search(
        spec_for(search_tiny, store, **kw, select_on=("hotpotqa", "wikidata_qa"), report_on=("wikidata_qa",))
    )
    val, other = Store(store).results("val"), Store(store).results("val@wikidata_qa")
    assert set(other) == set(val)  # every configuration and the baseline on both validation splits
    keys = [k for k in val if val[k]["steps"]]  # grid order (one process)
    score = {
        k: (-(val[k]["accuracy"] + other[k]["accuracy"]) / 2, (val[k]["loss"] + other[k]["loss"]) / 2)
        for k in keys
    }
    assert rep["roles"]["winner"]["key"] == min(keys, key=lambda k: score[k])
    assert rep["ranking"][0]["accuracy"] == pytest.approx(-score[rep["roles"]["winner"]["key"]][0])
    assert set(Store(store).results("test@wikidata_qa")) >= {BASELINE.key, rep["roles"]["winner"]["key"]}
    md = (store / "report.md").read_text()
    assert "Selected on the mean validation accuracy of: hotpotqa, wikidata_qa." in md
    assert {(r["task"], r["split"]) for r in rep["tasks"]["rows"]} == {
        ("wikidata_qa", "val"),
        ("wikidata_qa", "test"),
    }


def test_side_effects_default_to_every_other_offline_task():
    from types import SimpleNamespace

    spec = SimpleNamespace(task="fever_bigbench", report_on=(), select_on=(), side_effects=True)
    assert transfer.report_tasks(spec) == ["perplexity", "epistemic_reasoning", "wikidata_qa"]
    spec = SimpleNamespace(task="wikidata_qa", report_on=("fever",), select_on=(), side_effects=True)
    assert transfer.report_tasks(spec) == ["fever", "perplexity", "fever_bigbench", "epistemic_reasoning"]
    assert transfer.report_tasks(SimpleNamespace(**{**vars(spec), "side_effects": False})) == ["fever"]
