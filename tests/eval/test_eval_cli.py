"""`tensorllm eval` and `tensorllm data fetch` through typer, on a tiny saved model."""

from __future__ import annotations

import json
import random

import pytest
import typer
from typer.testing import CliRunner

from tensorllm.cli_eval import register
from tensorllm.errors import UserError

from eval_helpers import WORDS


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, as in the real CLI
        pass

    register(app)
    return app


@pytest.fixture(scope="module")
def model_dir(tiny_llama, tmp_path_factory):
    model, tok = tiny_llama
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def qa_file(jsonl):
    rng = random.Random(0)
    return jsonl([{"question": " ".join(rng.choice(WORDS) for _ in range(5)) + " ?", "answer": rng.choice(WORDS)}
                  for _ in range(20)])


def test_eval_writes_table_and_json(app, model_dir, qa_file, tmp_path):
    out = tmp_path / "res" / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(model_dir), "--task", "hotpotqa", "--data", str(qa_file),
                                      "--split", "test", "--limit", "7", "--batch-size", "3", "--device", "cpu",
                                      "--json", str(out), "--answer-mode", "continuation"])
    assert result.exit_code == 0, result.output
    assert "hotpotqa" in result.output and "test" in result.output
    doc = json.loads(out.read_text())
    (r,) = doc["results"]
    assert (r["task"], r["split"], r["n"], r["answer_mode"]) == ("hotpotqa", "test", 7, "continuation")
    assert 0.0 <= r["accuracy"] <= 100.0 and r["loss"] > 0 and r["examples"] is None
    assert doc["device"] == "cpu" and doc["versions"]["tensorllm"]
    assert not list(out.parent.glob(".*tmp*"))  # written atomically, no leftovers


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "hotpotqa", "--limit", "0"], "--limit must be a positive"),
    (["--task", "hotpotqa", "--split", "train"], "unknown split"),
    ([], "nothing to evaluate"),
    (["--task", "hotpotqa,perplexity"], "--data belongs to one task"),
])
def test_eval_bad_inputs(app, model_dir, qa_file, args, message):
    if "--task" in args and "nope" not in args:
        args = args + ["--data", str(qa_file)]
    result = CliRunner().invoke(app, ["eval", str(model_dir), "--device", "cpu"] + args)
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)


def test_eval_empty_split_is_an_error(app, model_dir, jsonl):
    path = jsonl([{"question": "what ?", "answer": "paris"}] * 4)  # 4 items: the val split is empty
    result = CliRunner().invoke(app, ["eval", str(model_dir), "--task", "hotpotqa", "--data", str(path),
                                      "--device", "cpu"])
    assert isinstance(result.exception, UserError) and "is empty" in str(result.exception)


def test_data_fetch_twice_does_nothing(app, bigbench):
    result = CliRunner().invoke(app, ["data", "fetch"])
    assert result.exit_code == 0, result.output
    assert "already cached" in result.output and "qa_wikidata" in result.output


@pytest.mark.real
def test_minilm_has_no_mlm_head(app):
    result = CliRunner().invoke(app, ["eval", "minilm-l6", "--task", "hotpotqa", "--device", "cpu"])
    assert isinstance(result.exception, UserError)
    assert "no language-model head" in str(result.exception)
