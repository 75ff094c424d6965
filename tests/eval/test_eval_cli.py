"""`tensorllm eval` and `tensorllm data fetch` through typer, on a tiny saved model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import typer
from eval_helpers import WORDS
from typer.testing import CliRunner

from tensorllm.base.errors import UserError
from tensorllm.cli.eval import register


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
    return jsonl(
        [
            {"question": " ".join(rng.choice(WORDS) for _ in range(5)) + " ?", "answer": rng.choice(WORDS)}
            for _ in range(20)
        ]
    )


def test_eval_writes_table_and_json(app, model_dir, qa_file, tmp_path):
    out = tmp_path / "res" / "eval.json"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(model_dir),
            "--task",
            "hotpotqa",
            "--data",
            str(qa_file),
            "--split",
            "test",
            "--limit",
            "7",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--answer-mode",
            "continuation",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "hotpotqa" in result.output and "test" in result.output
    doc = json.loads(out.read_text())
    (r,) = doc["results"]
    assert (r["task"], r["split"], r["n"], r["answer_mode"]) == ("hotpotqa", "test", 7, "continuation")
    assert 0.0 <= r["accuracy"] <= 100.0 and r["loss"] > 0 and r["examples"] is None
    assert doc["device"] == "cpu" and doc["versions"]["tensorllm"]
    assert not list(out.parent.glob(".*tmp*"))  # written atomically, no leftovers


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "hotpotqa", "--limit", "0"], "--limit must be a positive"),
        (["--task", "hotpotqa", "--split", "train"], "unknown split"),
        ([], "nothing to evaluate"),
        (["--task", "hotpotqa,perplexity"], "--data belongs to one task"),
    ],
)
def test_eval_bad_inputs(app, model_dir, qa_file, args, message):
    if "--task" in args and "nope" not in args:
        args = args + ["--data", str(qa_file)]
    result = CliRunner().invoke(app, ["eval", str(model_dir), "--device", "cpu"] + args)
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)


def test_eval_empty_split_is_an_error(app, model_dir, jsonl):
    path = jsonl([{"question": "what ?", "answer": "paris"}] * 4)  # 4 items: the val split is empty
    result = CliRunner().invoke(
        app, ["eval", str(model_dir), "--task", "hotpotqa", "--data", str(path), "--device", "cpu"]
    )
    assert isinstance(result.exception, UserError) and "is empty" in str(result.exception)


def _bad_files(tmp_path) -> dict[str, Path]:
    files = {
        "broken.jsonl": '{"question": "a ?", "answer": "b"}\n\n{"question": "c ?", "answer": \n',
        "record.json": '[\n  {"question": "a ?", "answer": "b"},\n'
        '  {"question": "c ?",\n   "answer": 7}\n]\n',
        "tiny.jsonl": '{"question": "a ?", "answer": "b"}\n' * 4,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "a-file").write_text("x")
    return {name.split(".")[0]: tmp_path / name for name in files}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "hotpotqa", "--data", "{broken}"], "broken.jsonl line 3: not valid JSON"),
        (
            ["--task", "hotpotqa", "--data", "{record}"],
            "record.json line 3 (item 2): field 'answer' must be a string",
        ),
        (["--task", "hotpotqa", "--data", "{tiny}"], "the val split of task 'hotpotqa' is empty"),
        (
            ["--task", "hotpotqa", "--data", "{tiny}", "--split", "all", "--limit", "0"],
            "--limit must be a positive",
        ),
        (["--task", "hotpotqa", "--data", "{tmp}"], "is a directory"),
        (
            ["--task", "hotpotqa", "--data", "{tiny}", "--split", "all", "--json", "{tmp}/a-file/out.json"],
            "is not a directory",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_cli, model_dir, tmp_path, args, message):
    """The issue's bad inputs through the real entry point: `error: ...` alone on stderr, exit code 2."""
    files = {k: str(v) for k, v in _bad_files(tmp_path).items()}
    args = [a.format(tmp=tmp_path, **files) for a in args]
    out = tmp_path / "out.json"
    if "--json" not in args:
        args += ["--json", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, stdout, stderr = run_cli("eval", str(model_dir), "--device", "cpu", *args)
    assert (rc, stdout) == (2, ""), stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and message in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not out.exists()


def test_option_errors_come_before_the_model_loads(run_cli, tmp_path):
    """A wrong answer mode is reported at once, before the (here: missing) model is looked for."""
    rc, _, stderr = run_cli(
        "eval", str(tmp_path / "no-model"), "--task", "wikidata_qa", "--answer-mode", "prompt"
    )
    assert rc == 2 and "unknown answer mode 'prompt'" in stderr


def test_data_fetch_twice_does_nothing(app, bigbench):
    result = CliRunner().invoke(app, ["data", "fetch"])
    assert result.exit_code == 0, result.output
    assert "already cached" in result.output and "qa_wikidata" in result.output


@pytest.mark.real
def test_minilm_has_no_mlm_head(app, qa_file):
    result = CliRunner().invoke(
        app, ["eval", "minilm-l6", "--task", "hotpotqa", "--data", str(qa_file), "--device", "cpu"]
    )
    assert isinstance(result.exception, UserError)
    assert "no language-model head" in str(result.exception)
