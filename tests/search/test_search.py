"""End-to-end searches on a tiny random Llama (in process): resume, refuse-to-mix, reports,
data-free comparison, hybrid, time budget, and that no Tucker step is decomposed twice."""

import json

import pytest
from search_helpers import spec_for, store_numbers

import tensorllm.methods.tucker as tucker_mod
from tensorllm.base.errors import UserError
from tensorllm.search import BASELINE, Store, run_search

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tucker_run(search_tiny, tmp_path_factory):
    store = tmp_path_factory.mktemp("tucker") / "store"
    report = run_search(spec_for(search_tiny, store, layers="0,2"))
    return store, report


def test_report_files_and_contents(tucker_run):
    store, report = tucker_run
    assert report["status"] == "complete"
    for name in ("store.json", "report.md", "report.json", "heatmap.png", "results-rank0.jsonl"):
        assert (store / name).is_file(), name
    png = (store / "heatmap.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    from PIL import Image

    with Image.open(store / "heatmap.png") as im:
        im.verify()
    on_disk = json.loads((store / "report.json").read_text())
    assert on_disk["roles"]["winner"]["key"] == report["roles"]["winner"]["key"]
    md = (store / "report.md").read_text()
    assert "search winner" in md and "data-free `auto` ranks" in md and "heatmap.png" in md
    # the grid: 2 layers x 3 settings, every cell evaluated on validation
    assert report["grid"]["rows"] == ["L0", "L2"] and len(report["grid"]["cols"]) == 3
    assert all(c is not None for row in report["grid"]["cells"] for c in row)


def test_report_says_how_accuracy_was_measured(tucker_run):
    from tensorllm.search.report import markdown

    store, report = tucker_run
    assert report["accuracy_metric"] == {"metric": "generate-substring", "answer_mode": "faithful"}
    assert "answer mode: faithful" in (store / "report.md").read_text()
    classify = {**report, "accuracy_metric": {"metric": "label-logits", "answer_mode": None}}
    assert "metric: label-logits (no answer mode)" in markdown(classify)


def test_perplexity_search_maps_loss_reductions(search_tiny, tmp_path):
    """No accuracy: the grid (table and heatmap) shows baseline loss minus each configuration's."""
    import random

    from search_helpers import WORDS

    rng = random.Random(0)
    data = tmp_path / "paragraphs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(12))}) + "\n" for _ in range(15)
        )
    )
    store = tmp_path / "s"
    rep = run_search(
        spec_for(search_tiny, store, task="perplexity", data=str(data), layers="0", ranks=((8, 4, 2),))
    )
    (cell,) = rep["grid"]["cells"][0]
    assert rep["grid"]["delta"] == "loss" and cell["accuracy"] is None
    assert cell["delta"] == pytest.approx(rep["roles"]["baseline"]["val"]["loss"] - cell["loss"])
    md = (store / "report.md").read_text()
    assert "Val loss reduction vs baseline (nats/token)" in md and f"| L0 | {cell['delta']:+.4f} |" in md


def test_winner_follows_the_selection_rule_and_is_tested(tucker_run):
    store, report = tucker_run
    val = Store(store).results("val")
    grid_keys = {c["key"] for row in report["grid"]["cells"] for c in row}
    best = max((val[k] for k in grid_keys), key=lambda x: (x["accuracy"], -x["loss"]))
    assert report["roles"]["winner"]["key"] == best["key"]
    test = Store(store).results("test")
    for role in ("baseline", "winner", "auto_best", "auto_at_winner_layer"):
        assert report["roles"][role]["key"] in test, role
        assert report["roles"][role]["test"]["n"] == 10
    assert report["roles"]["baseline"]["val"]["n"] == 8


def test_each_config_once_and_rerun_evaluates_nothing(tucker_run, search_tiny):
    store, report = tucker_run
    before = store_numbers(store)
    n_configs = len({c["key"] for row in report["grid"]["cells"] for c in row})
    assert sum(1 for (_, split) in before if split == "val") == n_configs + 1  # + baseline
    again = run_search(spec_for(search_tiny, store, layers="0,2"))
    assert again["run"]["evaluated_this_run"] == 0
    assert store_numbers(store) == before
    assert again["roles"]["winner"]["key"] == report["roles"]["winner"]["key"]


def test_extended_grid_reuses_the_shared_configs(tucker_run, search_tiny, tmp_path):
    store, _ = tucker_run
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in store.iterdir():
        if p.name != ".lock":
            (copy / p.name).write_bytes(p.read_bytes())
    report = run_search(
        spec_for(search_tiny, copy, layers="all")
    )  # adds layer 1: 3 configs (+3 test roles at most)
    assert 3 <= report["run"]["evaluated_this_run"] <= 6


@pytest.mark.parametrize(
    "change",
    [
        {"limit_val": 6},
        {"task": "hotpotqa"},
        {"answer_mode": "continuation"},
        {"batch_size": 3},
        {"method": "laser", "rhos": (0.5,)},
        {"model": "other"},
    ],
)
def test_refuses_a_store_written_by_another_search(tucker_run, search_tiny, tmp_path, change):
    store, _ = tucker_run
    if change.get("model") == "other":
        change = {"model": search_tiny["other_model"]}
    if change.get("task") == "hotpotqa":  # data in hotpotqa's format, so that the store is what is refused
        rows = [json.loads(line) for line in open(search_tiny["data"], encoding="utf-8")]
        path = tmp_path / "hotpot.jsonl"
        path.write_text(
            "".join(json.dumps({"question": r["input"], "answer": r["target"]}) + "\n" for r in rows)
        )
        change = {**change, "data": str(path)}
    with pytest.raises(UserError) as exc:
        run_search(spec_for(search_tiny, store, layers="0,2", **change))
    assert "different search" in str(exc.value) and "\n" not in str(exc.value)


def test_no_tucker_is_decomposed_twice(search_tiny, tmp_path, monkeypatch):
    calls = []
    real = tucker_mod.compress_layer
    monkeypatch.setattr(tucker_mod, "compress_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    # "16,4,6" and "0.5,0.5,1" select the same ranks: one configuration; the winner and the auto
    # configurations are evaluated again on test from the cache
    report = run_search(
        spec_for(search_tiny, tmp_path / "s", layers="1", ranks=((16, 4, 6), (0.5, 0.5, 1.0), "auto"))
    )
    distinct = {c["key"] for row in report["grid"]["cells"] for c in row}
    assert len(distinct) == 2 and len(calls) == 2
    assert report["run"]["step_cache"]["hits"] >= 1


def test_time_budget_gives_a_partial_report_then_resumes(search_tiny, tmp_path):
    spec = spec_for(search_tiny, tmp_path / "s", layers="0,1", time_budget=1e-9)
    partial = run_search(spec)
    assert partial["status"] == "partial" and partial["run"]["evaluated_this_run"] == 0
    assert "Partial" in (tmp_path / "s" / "report.md").read_text()
    spec.time_budget = None
    done = run_search(spec)
    assert done["status"] == "complete" and done["progress"]["val_done"] == done["progress"]["configurations"]


def test_laser_then_hybrid_from_two_stores(search_tiny, tmp_path, tucker_run):
    tucker_store, _ = tucker_run
    laser = run_search(
        spec_for(search_tiny, tmp_path / "laser", method="laser", layers="1,2", rhos=(0.5, 0.1), ranks=())
    )
    assert laser["status"] == "complete" and "auto_best" not in laser["roles"]
    hybrid = run_search(
        spec_for(
            search_tiny,
            tmp_path / "hybrid",
            method="hybrid",
            ranks=(),
            top_k=2,
            sources=(str(tucker_store), str(tmp_path / "laser")),
        )
    )
    assert hybrid["status"] == "complete"
    assert len(hybrid["grid"]["rows"]) == 2 and len(hybrid["grid"]["cols"]) == 2
    steps = hybrid["roles"]["winner"]["steps"]
    assert [s["method"] for s in steps] == ["tucker", "laser"]
    assert (tmp_path / "hybrid" / "heatmap.png").read_bytes().startswith(PNG_MAGIC)


def test_hybrid_refuses_sources_of_another_search(search_tiny, tmp_path, tucker_run):
    other = run_search(spec_for(search_tiny, tmp_path / "other", layers="0", limit_val=4))
    assert other["status"] == "complete"
    with pytest.raises(UserError, match="different search"):
        run_search(
            spec_for(
                search_tiny,
                tmp_path / "h",
                method="hybrid",
                ranks=(),
                sources=(str(tucker_run[0]), str(tmp_path / "other")),
            )
        )


def test_hybrid_from_explicit_recipes(search_tiny, tmp_path):
    r1 = tmp_path / "a.yaml"
    r1.write_text(
        "steps:\n  - {method: tucker, layers: [0], ranks: [8, 4, 2]}\n"
        "  - {method: laser, layers: [1], rho: 0.5}\n"
    )
    r2 = tmp_path / "b.yaml"
    r2.write_text("steps:\n  - {method: laser, layers: [2], rho: 0.25}\n")
    rep = run_search(
        spec_for(search_tiny, tmp_path / "s", method="hybrid", ranks=(), recipes=(str(r1), str(r2)))
    )
    assert rep["grid"]["rows"] == ["a", "b"] and rep["status"] == "complete"


def test_bad_options_are_user_errors(search_tiny, tmp_path):
    with pytest.raises(UserError, match="needs --ranks"):
        run_search(spec_for(search_tiny, tmp_path / "s", ranks=()))
    with pytest.raises(UserError, match="unknown task"):
        run_search(spec_for(search_tiny, tmp_path / "s", task="nope"))
    with pytest.raises(UserError, match="hybrid"):
        run_search(spec_for(search_tiny, tmp_path / "s", method="hybrid", ranks=()))
    assert BASELINE.key  # the baseline is a configuration with no steps


def test_a_role_dropped_by_the_race_says_on_how_many_items_it_was_scored():
    """The Gemma-3 H200 report showed the data-free role's accuracy on the race's first 237 items beside
    the baseline's on all 3,786, with nothing saying so (18.99 vs 21.55, "Δ +5.06")."""
    from pathlib import Path

    from tensorllm.search import report

    early = {"val": {"accuracy": 18.99, "loss": 7.221, "n": 237}, "delta_val": 5.06}
    assert report.role_val_cells(early, 3786) == ("18.99 (n=237)", "+5.06 (n=237)", "7.2210 (n=237)")
    whole = {"val": {"accuracy": 33.81, "loss": 6.3017, "n": 3786}, "delta_val": 12.26}
    assert report.role_val_cells(whole, 3786) == ("33.81", "+12.26", "6.3017")
    real = Path(__file__).parents[2] / "bench/results/gemma3_searches_h200/gemma_tucker/report.json"
    md = report.markdown(json.loads(real.read_text()))
    auto = "| data-free `auto` ranks, layer selected on val |"
    row = next(line for line in md.splitlines() if line.startswith(auto))
    assert "18.99 (n=237)" in row and "+5.06 (n=237)" in row
    assert "the race dropped this configuration after the first n validation items" in md
    assert f"{auto} val (n=237) | 18.99 |" in md  # the metrics table
