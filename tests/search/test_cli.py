"""`tensorllm search` option parsing: the flags become the SearchSpec that run_search receives."""

import typer
from typer.testing import CliRunner

import tensorllm.search.runner as runner
from tensorllm import cli_search


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
    spec = _invoke(monkeypatch, ["m", "--task", "wikidata_qa", "--store", "s", "--layers", "0-3",
                                 "--ranks", "144,48,4;0.5,0.5,1;auto", "--rates", "5,20", "--limit-val", "50",
                                 "--gpus", "2", "--expand-kv", "--time-budget", "540"])
    assert spec.ranks == ((144, 48, 4), (0.5, 0.5, 1.0), "auto") and spec.rates == (5.0, 20.0)
    assert (spec.layers, spec.limit_val, spec.gpus, spec.expand_kv, spec.time_budget) == ("0-3", 50, 2, True, 540.0)


def test_laser_and_hybrid_flags(monkeypatch):
    spec = _invoke(monkeypatch, ["m", "--task", "fever", "--store", "s", "--method", "laser",
                                 "--rhos", "0.9,0.01", "--matrix", "ffn_in,ffn_out", "--nproc", "3"])
    assert spec.rhos == (0.9, 0.01) and spec.matrices == ("ffn_in", "ffn_out") and spec.gpus == 3
    spec = _invoke(monkeypatch, ["m", "--task", "fever", "--store", "s", "--method", "hybrid",
                                 "--from", "a", "--from", "b", "--top-k", "2"])
    assert spec.sources == ("a", "b") and spec.top_k == 2
