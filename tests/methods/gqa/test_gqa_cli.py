"""`tensorllm gqa` end to end on a tiny checkpoint: files written, report contents, errors."""

import json

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from gqa_models import english_text, smollm2_tokenizer, tiny_llama
from tensorllm import cli_gqa
from tensorllm.errors import UserError


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    cli_gqa.register(app)

    @app.command()
    def _unused() -> None:  # a second command, so `gqa` stays a named subcommand
        pass

    return app


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = tiny_llama(4, 4, vocab=49152, dtype=torch.float32)
    model.save_pretrained(root / "mha")
    smollm2_tokenizer().save_pretrained(root / "mha")
    (root / "text.txt").write_text(english_text(), encoding="utf-8")
    return root


def test_gqa_command_writes_a_checkpoint_recipe_and_report(app, checkpoint):
    out = checkpoint / "gqa2"
    args = ["gqa", str(checkpoint / "mha"), "--kv-heads", "2", "--out", str(out), "--calib-file",
            str(checkpoint / "text.txt"), "--calib-tokens", "512", "--seq-len", "128", "--eval-tokens", "256",
            "--decode-tokens", "4", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out perplexity" in result.output
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 2
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["steps"][0]["method"] == "gqa" and recipe["steps"][0]["kv_heads"] == 2
    report = json.loads((out / "report.json").read_text())
    assert report["before"]["kv_heads"] == 4 and report["after"]["kv_heads"] == 2
    assert report["after"]["kv_cache_bytes_per_token"] * 2 == report["before"]["kv_cache_bytes_per_token"]
    assert report["before"]["perplexity"] > 1 and report["after"]["perplexity"] > 1
    assert report["after"]["decode_tokens_per_s"] > 0
    assert len(report["layers"]) == 2 and "key_energy_kept" in report["layers"][0]
    assert {"torch", "transformers"} <= set(report["versions"])
    assert report["eval"]["held_out_tokens"] == 256 and report["eval"]["calib_tokens"] == 512

    again = CliRunner().invoke(app, args)  # the output exists now
    assert isinstance(again.exception, UserError) and "already exists" in str(again.exception)


@pytest.mark.parametrize("extra,message", [
    (["--kv-heads", "3"], "does not divide"),
    (["--kv-heads", "2", "--grouping", "best"], "not one of"),
    (["--kv-heads", "2", "--calib-tokens", "100000"], "too short"),
])
def test_gqa_command_bad_input(app, checkpoint, extra, message):
    args = ["gqa", str(checkpoint / "mha"), "--out", str(checkpoint / "bad"), "--calib-file",
            str(checkpoint / "text.txt"), "--device", "cpu", *extra]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
    assert not (checkpoint / "bad").exists()
