"""`tensorllm search` option parsing (the flags become the SearchSpec that run_search receives), and bad
input through the real entry point: one `error: ...` line, exit code 2, nothing written."""

import json

import pytest
import typer
from search_helpers import spec_for
from typer.testing import CliRunner

import tensorllm.search.runner as runner
from tensorllm.cli import search as cli_search
from tensorllm.search import run_search


def _invoke(monkeypatch, args):
    seen = {}
    monkeypatch.setattr(runner, "run_search", lambda spec: seen.setdefault("spec", spec) and None)
    app = typer.Typer()
    cli_search.register(app)
    app.command("noop", hidden=True)(lambda: None)  # keeps "search" a named subcommand
    result = CliRunner().invoke(app, ["search", *args])
    assert result.exit_code == 0, result.output
    return seen["spec"]


def test_tucker_flags(monkeypatch):
    spec = _invoke(
        monkeypatch,
        [
            "m",
            "--task",
            "wikidata_qa",
            "--store",
            "s",
            "--layers",
            "0-3",
            "--ranks",
            "144,48,4;0.5,0.5,1;auto",
            "--rates",
            "5,20",
            "--limit-val",
            "50",
            "--gpus",
            "2",
            "--expand-kv",
            "--time-budget",
            "540",
        ],
    )
    assert spec.options["ranks"] == [(144, 48, 4), (0.5, 0.5, 1.0), "auto"] and spec.options["rates"] == [
        5.0,
        20.0,
    ]
    assert (spec.layers, spec.limit_val, spec.gpus, spec.expand_kv, spec.time_budget) == (
        "0-3",
        50,
        2,
        True,
        540.0,
    )


def test_laser_and_hybrid_flags(monkeypatch):
    spec = _invoke(
        monkeypatch,
        [
            "m",
            "--task",
            "fever",
            "--store",
            "s",
            "--method",
            "laser",
            "--rhos",
            "0.9,0.01",
            "--matrix",
            "up,down",
            "--nproc",
            "3",
        ],
    )
    assert spec.options == {"rhos": [0.9, 0.01], "matrices": ("up", "down")} and spec.gpus == 3
    spec = _invoke(
        monkeypatch,
        [
            "m",
            "--task",
            "fever",
            "--store",
            "s",
            "--method",
            "hybrid",
            "--from",
            "a",
            "--from",
            "b",
            "--top-k",
            "2",
        ],
    )
    assert spec.sources == ("a", "b") and spec.top_k == 2


def test_race_selection_and_task_flags(monkeypatch):
    args = "m --task wikidata_qa --store s --race-first 50 --race-eta 3 --race-alpha 0.05 --race-finalists 2"
    args += " --select-by exact --side-effects --report-on"
    spec = _invoke(monkeypatch, [*args.split(), "perplexity, fever_bigbench"])
    assert (spec.race_first, spec.race_eta, spec.race_alpha, spec.race_finalists) == (50, 3.0, 0.05, 2)
    assert spec.select_by == "exact" and not spec.exhaustive and spec.side_effects
    assert spec.report_on == ("perplexity", "fever_bigbench") and spec.select_on == ()
    exhaustive = _invoke(monkeypatch, ["m", "--task", "wikidata_qa", "--store", "s", "--exhaustive"])
    assert exhaustive.exhaustive and exhaustive.race_params() is None


def _tree(path):
    """{name: bytes} of a directory (None when it does not exist)."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.exists() else None


@pytest.fixture(scope="module")
def small_store(search_tiny, tmp_path_factory):
    store = tmp_path_factory.mktemp("cli") / "store"
    run_search(spec_for(search_tiny, store, layers="0", ranks=((8, 4, 2),)))
    return store


@pytest.fixture(scope="module")
def race_store(search_tiny, tmp_path_factory):
    store = tmp_path_factory.mktemp("cli") / "race"
    run_search(spec_for(search_tiny, store, layers="0", ranks=((8, 4, 2),), exhaustive=False))
    return store


def _inputs(tmp_path, store, race) -> dict:
    """The files the bad-input cases name, written into tmp_path: {name: path}."""
    files = {
        "broken.jsonl": '{"input": "a is", "target": "b"}\n{"input": "c is", \n',
        "short.jsonl": '{"input": "a is", "target": "b"}\n' * 4,
        "fever.jsonl": "".join(f'{{"claim": "paris is red", "label": {i % 2}}}\n' for i in range(10)),
        "gqa.yaml": "steps:\n  - {method: gqa, kv_heads: 1}\n",
        "a-file": "x",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {
        "store": store,
        "race_store": race,
        "file": tmp_path / "a-file",
        **{name.split(".")[0]: tmp_path / name for name in files if "." in name},
    }


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--task": "nope"}, "unknown task 'nope'"),
        ({"--data": "{broken}"}, "broken.jsonl line 2: not valid JSON"),
        ({"--data": "{short}"}, "the val split of task 'wikidata_qa' is empty"),
        ({"--limit-val": "0"}, "--limit-val must be >= 1"),
        ({"--threads": "-1"}, "--threads must be >= 1"),
        ({"--threads": "0"}, "--threads must be >= 1"),
        ({"--store": "{store}", "--limit-val": "6"}, "belongs to a different search (limit_val: store has 8"),
        (
            {"--store": "{store}", "--answer-mode": "continuation"},
            "belongs to a different search (answer_mode",
        ),
        ({"--store": "{file}/store"}, "cannot create the store"),
        (
            {"--task": "fever", "--data": "{fever}"},
            "share a first token",
        ),  # the tiny vocabulary lacks true/false
        (
            {"--method": "hybrid", "--recipe": "{gqa}"},
            "step 1: the search applies laser and tucker steps, not 'gqa'",
        ),
        # racing (the default) and its store: an exhaustive store is not resumed by a race, or the reverse
        ({"--store": "{store}"}, "made by an exhaustive search; resume it with --exhaustive"),
        ({"--store": "{race_store}", "--exhaustive": ""}, "made by a racing search (first 8, eta 2.0"),
        ({"--store": "{race_store}", "--race-first": "4"}, "made by a race with first 8"),
        ({"--race-first": "9"}, "--race-first 9 is larger than the validation split (8 items)"),
        ({"--race-first": "0"}, "--race-first must be >= 1"),
        ({"--race-alpha": "2"}, "--race-alpha must be between 0 and 1"),
        ({"--exhaustive": "", "--race-eta": "3"}, "--race-eta set the race; an --exhaustive search does not"),
        ({"--select-by": "bleu"}, "unknown --select-by 'bleu'"),
        # other tasks (transfer.py)
        (
            {"--select-on": "perplexity"},
            "--select-on perplexity is not among --task / --report-on (wikidata_qa)",
        ),
        (
            {"--report-on": "perplexity", "--select-on": "wikidata_qa,perplexity"},
            "a race selects on --task alone",
        ),
        ({"--report-on": "nope"}, "unknown task 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    run_cli, search_tiny, small_store, race_store, tmp_path, change, message
):
    names = _inputs(tmp_path, small_store, race_store)
    flags = {
        "--task": "wikidata_qa",
        "--data": search_tiny["data"],
        "--store": str(tmp_path / "new"),
        "--layers": "0",
        "--ranks": "8,4,2",
        "--limit-val": "8",
        "--limit-test": "10",
        "--batch-size": "16",
        "--device": "cpu",
        "--threads": "1",
    }
    flags.update({k: v.format(**names) for k, v in change.items()})
    before = _tree(small_store), _tree(race_store)
    args = [x for kv in flags.items() for x in kv if x != ""]  # "": a flag without a value
    rc, stdout, stderr = run_cli("search", search_tiny["model"], *args)
    assert (rc, stdout) == (2, ""), stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and message in stderr, stderr
    assert not (tmp_path / "new").exists() and (_tree(small_store), _tree(race_store)) == before


def test_summary_says_how_accuracy_was_measured(small_store, capsys):
    report = json.loads((small_store / "report.json").read_text())
    cli_search.print_summary(report, small_store)
    assert "answer mode: faithful" in capsys.readouterr().out
