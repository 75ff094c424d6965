"""Racing searches end to end on the tiny Llama (race.py, racing.py), and the statistics of reports:
part lines, finalists on the whole split, resume without recomputation, the same decisions on
replay and with two processes, a store whose top two are tied, stores without per-item results,
and selection by another metric."""

import json

import pytest
from search_helpers import spec_for, write_task

from tensorllm.search import BASELINE, Store, race, run_search
from tensorllm.search.racing import view

RACE = dict(
    layers="all",
    ranks=((8, 4, 2), (4, 2, 1), "auto"),
    limit_val=None,  # the 400-record file: 80 validation items
    limit_test=40,
    exhaustive=False,
    race_first=10,
    race_alpha=0.3,  # a loose bound, so that the tiny model's configurations do get dropped
    race_finalists=2,
)


@pytest.fixture(scope="module")
def tiny400(search_tiny, tmp_path_factory):
    return {**search_tiny, "data": str(write_task(tmp_path_factory.mktemp("d") / "task400.jsonl", n=400))}


@pytest.fixture(scope="module")
def race_run(tiny400, tmp_path_factory):
    store = tmp_path_factory.mktemp("race") / "store"
    return store, run_search(spec_for(tiny400, store, **RACE))


def _parts(store):
    return sorted(
        (x["key"], tuple(x.get("part") or (0, x["n"])), x["accuracy"], x["loss"])
        for x in Store(store).lines()
        if x["split"] == "val"
    )


def test_a_race_scores_its_finalists_on_the_whole_split(race_run):
    store, rep = race_run
    r = rep["race"]
    assert rep["status"] == "complete" and r["done"] and r["n"] == 80 and r["rounds"]
    dropped = {k for rd in r["rounds"] for k in rd["dropped"]}
    assert dropped and rep["roles"]["winner"]["key"] in r["finalists"] and not dropped & set(r["finalists"])
    assert rep["roles"]["winner"]["val"]["n"] == 80 and rep["roles"]["baseline"]["val"]["n"] == 80
    assert r["item_evaluations"] < r["full_grid_item_evaluations"] == 80 * 9
    complete, partial = view(Store(store), "val", 80)
    assert set(partial) == dropped and set(r["finalists"]) <= set(complete)
    assert all(p["n"] < 80 for p in partial.values())
    parts = [x for x in Store(store).lines() if "part" in x]
    assert parts and all(
        x["n"] == x["part"][1] - x["part"][0] and len(x["items"]["nll"]) == x["n"] for x in parts
    )
    assert BASELINE.key in Store(store).results("val")  # an ordinary line of the whole split
    md = (store / "report.md").read_text()
    assert "## Race" in md and "raced on validation" in md and "(n=" in md  # dropped cells say on how many
    cells = [c for row in rep["grid"]["cells"] for c in row]
    assert {c["key"] for c in cells if "n" in c} == dropped
    # the report's evaluation time counts the dropped configurations' slices too (it once did not)
    every = sum(x["seconds"] for x in Store(store).lines())
    assert rep["run"]["eval_seconds_in_store"] == pytest.approx(every, abs=0.01)


def test_the_stored_results_replay_the_same_decisions(race_run):
    store, rep = race_run
    params = race.RaceParams(**rep["race"]["params"])
    keys = [k for k in rep["race"]["items_per_configuration"]]
    lines = [x for x in Store(store).lines() if x["split"] == "val" and x["key"] in keys]
    plan = race.plan(keys, 80, params, race.prefixes(lines, "accuracy"))
    assert plan.done and plan.finalists == rep["race"]["finalists"]
    assert [r["dropped"] for r in plan.rounds] == [r["dropped"] for r in rep["race"]["rounds"]]


def test_a_race_resumes_without_recomputing(tiny400, race_run, tmp_path):
    store, rep = race_run
    again = run_search(spec_for(tiny400, store, **RACE))
    assert again["run"]["evaluated_this_run"] == 0 and again["race"]["rounds"] == rep["race"]["rounds"]
    cut = tmp_path / "cut"  # nothing evaluated in the first run: stopped by its time budget
    first = run_search(spec_for(tiny400, cut, **RACE, time_budget=1e-6))
    assert first["status"] == "partial" and not first["race"]["done"]
    done = run_search(spec_for(tiny400, cut, **RACE))
    assert done["status"] == "complete" and _parts(cut) == _parts(store)
    assert done["roles"]["winner"]["key"] == rep["roles"]["winner"]["key"]


def test_two_processes_race_like_one(tiny400, race_run, tmp_path):
    store, rep = race_run
    two = run_search(spec_for(tiny400, tmp_path / "two", **RACE, gpus=2))
    assert _parts(tmp_path / "two") == _parts(store)
    assert two["race"]["rounds"] == rep["race"]["rounds"]
    assert two["roles"]["winner"]["key"] == rep["roles"]["winner"]["key"]


# -- statistics in the report ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_config_store(tiny400, tmp_path_factory):
    store = tmp_path_factory.mktemp("tie") / "store"
    spec = dict(layers="0", ranks=((8, 4, 2), (4, 2, 1)), limit_val=None, limit_test=40)
    run_search(spec_for(tiny400, store, **spec))
    return store, spec


def _rewrite(store, change):
    path = store / "results-rank0.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(change(x), sort_keys=True) + "\n" for x in lines))


def _set_val(line, ones: set):
    bits = "".join("1" if i in ones else "0" for i in range(80))
    line["items"] = {**line["items"], "faithful": bits}
    line["accuracy"] = line["metrics"]["faithful"] = 100.0 * len(ones) / 80
    return line


def test_the_report_says_when_the_top_two_are_tied(tiny400, two_config_store, tmp_path):
    import shutil

    src, spec = two_config_store
    store = tmp_path / "tied"
    shutil.copytree(src, store)
    keys = [x["key"] for x in Store(store).results("val").values() if x["steps"]]

    def tie(line):  # winner 41 of 80, runner-up 40 (one item apart), baseline 10: a tie, then a clear gain
        if line["split"] != "val":
            return line
        ones = {BASELINE.key: set(range(10)), keys[0]: set(range(41)), keys[1]: set(range(40))}[line["key"]]
        return _set_val(line, ones)

    _rewrite(store, tie)
    rep = run_search(spec_for(tiny400, store, **spec))
    assert rep["run"]["evaluated_this_run"] <= 1  # at most the winner's test evaluation
    cmp = {(c["a"], c["b"], c["split"]): c for c in rep["statistics"]["comparisons"]}
    tied = cmp[("winner", "runner_up", "val")]
    assert (tied["only_a"], tied["only_b"], tied["p"]) == (1, 0, 1.0) and not tied["distinguishable"]
    assert tied["ci95"][0] <= 0 <= tied["ci95"][1] and tied["delta"] == pytest.approx(1.25)
    gain = cmp[("winner", "baseline", "val")]
    assert gain["distinguishable"] and gain["p"] < 1e-6 and gain["ci95"][0] > 0
    md = (store / "report.md").read_text()
    assert "**The winner is not distinguishable from the runner-up" in md
    assert "The winner is better than the baseline on validation" in md
    assert "| search winner (selected on val) vs runner-up | val | accuracy | +1.25 |" in md


def test_a_store_without_per_item_results_still_reports(tiny400, two_config_store, tmp_path):
    import shutil

    src, spec = two_config_store
    store = tmp_path / "old"
    shutil.copytree(src, store)

    def old(line):  # a line as stores before per-item results held them
        line.pop("items"), line.pop("metrics"), line["eval"].pop("metrics")
        return line

    _rewrite(store, old)
    rep = run_search(spec_for(tiny400, store, **spec))
    assert rep["status"] == "complete" and rep["run"]["evaluated_this_run"] == 0
    assert rep["statistics"]["comparisons"] == [] and not rep["statistics"]["per_item_results"]
    assert "No per-item results in the store" in (store / "report.md").read_text()


def test_select_by_another_metric_reselects_from_the_same_store(tiny400, two_config_store, tmp_path):
    import shutil

    src, spec = two_config_store
    store = tmp_path / "exact"
    shutil.copytree(src, store)
    keys = [x["key"] for x in Store(store).results("val").values() if x["steps"]]

    def exact(line):  # the accuracy winner has no exact matches; the other has 5
        if line["split"] == "val" and line["key"] in keys:
            hits = 0 if line["key"] == keys[0] else 5
            line["items"]["exact"] = "1" * hits + "0" * (80 - hits)
            line["metrics"]["exact"] = 100.0 * hits / 80
            line["accuracy"] = 50.0 if line["key"] == keys[0] else 40.0
        return line

    _rewrite(store, exact)
    by_acc = run_search(spec_for(tiny400, store, **spec))
    by_exact = run_search(spec_for(tiny400, store, **spec, select_by="exact"))
    assert by_acc["roles"]["winner"]["key"] == keys[0] and by_exact["roles"]["winner"]["key"] == keys[1]
    assert by_exact["selection"].startswith("highest validation exact") and by_exact["select_by"] == "exact"
    assert {c["metric"] for c in by_exact["statistics"]["comparisons"]} == {"exact", "accuracy"}
    assert "exact match, first answer span" in (store / "report.md").read_text()


def test_rescored_finalists_get_a_whole_split_line(tiny400, race_run, tmp_path):
    """As in half precision: the finalists are scored on all 80 items in one evaluation each."""
    _, rep = race_run
    store = tmp_path / "rescore"
    again = run_search(spec_for(tiny400, store, **RACE, race_rescore=True))
    r = again["race"]
    assert (
        r["params"]["rescore"]
        and r["rounds"] == rep["race"]["rounds"]
        and r["finalists"] == rep["race"]["finalists"]
    )
    whole = Store(store).results("val")  # ordinary lines: the baseline and each finalist's fresh evaluation
    assert set(whole) == {BASELINE.key, *r["finalists"]} and all(whole[k]["n"] == 80 for k in whole)
    raced = sum(r["items_per_configuration"].values())
    assert r["item_evaluations"] == raced + r["rounds"][-1]["items"] * len(r["finalists"])  # + their slices
    assert again["roles"]["winner"]["key"] in r["finalists"]
