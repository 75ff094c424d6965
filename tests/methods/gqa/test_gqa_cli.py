"""`tensorllm gqa` end to end on a tiny checkpoint: files written, report contents, errors."""

import json

import pytest
import torch
import typer
import yaml
from gqa_models import english_text, smollm2_tokenizer, tiny_gpt2, tiny_llama
from typer.testing import CliRunner

from tensorllm.base.errors import UserError
from tensorllm.cli import gqa as cli_gqa


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
    tiny_gpt2(vocab=49152).save_pretrained(root / "gpt2")  # fused qkv: no separable K/V projections
    smollm2_tokenizer().save_pretrained(root / "gpt2")
    (root / "text.txt").write_text(english_text(), encoding="utf-8")
    (root / "empty.txt").write_text("\n\n   \n", encoding="utf-8")
    (root / "short.txt").write_text("Beautiful is better than ugly.", encoding="utf-8")
    return root


def test_gqa_command_writes_a_checkpoint_recipe_and_report(app, checkpoint):
    out = checkpoint / "gqa2"
    args = [
        "gqa",
        str(checkpoint / "mha"),
        "--kv-heads",
        "2",
        "--out",
        str(out),
        "--calib-file",
        str(checkpoint / "text.txt"),
        "--calib-tokens",
        "512",
        "--seq-len",
        "128",
        "--eval-tokens",
        "256",
        "--decode-tokens",
        "4",
        "--device",
        "cpu",
    ]
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


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--kv-heads", "3"], "does not divide"),
        (["--kv-heads", "2", "--grouping", "best"], "not one of"),
        (["--kv-heads", "2", "--calib-tokens", "100000"], "too short"),
    ],
)
def test_gqa_command_bad_input(app, checkpoint, extra, message):
    args = [
        "gqa",
        str(checkpoint / "mha"),
        "--out",
        str(checkpoint / "bad"),
        "--calib-file",
        str(checkpoint / "text.txt"),
        "--device",
        "cpu",
        *extra,
    ]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
    assert not (checkpoint / "bad").exists()


FAST = [
    "--calib-tokens",
    "512",
    "--seq-len",
    "128",
    "--eval-tokens",
    "256",
    "--decode-tokens",
    "0",
    "--device",
    "cpu",
]


@pytest.mark.parametrize(
    "model,extra,message",
    [
        ("mha", ["--kv-heads", "3"], "kv_heads=3 does not divide the 4 query heads"),
        ("mha", ["--kv-heads", "4"], "kv_heads=4 must be fewer than the model's 4 K/V heads"),
        ("mha", ["--kv-heads", "8"], "kv_heads=8 does not divide the 4 query heads"),
        ("gpt2", ["--kv-heads", "2"], "gpt2 checkpoints have no separate K/V projections"),
        ("mha", ["--kv-heads", "2", "--calib-file", "{root}/empty.txt"], "the calibration text is empty"),
        ("mha", ["--kv-heads", "2", "--calib-file", "{root}/short.txt"], "the calibration text is too short"),
        ("mha", ["--kv-heads", "2", "--calib-file", "{root}"], "is not a file"),
        ("mha", ["--kv-heads", "2", "--eval-tokens", "0"], "eval_tokens must be at least 2"),
        ("mha", ["--kv-heads", "2", "--eval-tokens", "1"], "eval_tokens must be at least 2"),
        ("mha", ["--kv-heads", "2", "--decode-tokens", "-1"], "decode_tokens must be 0 (skip) or more"),
        ("mha", ["--kv-heads", "2", "--grouping-metric", "l2"], "gqa.grouping_metric: 'l2' is not one of"),
        ("mha", ["--kv-heads", "2", "--grouping-on", "queries"], "gqa.grouping_on: 'queries' is not one of"),
        ("mha", ["--kv-heads", "2", "--sink-tokens", "128"], "gqa.sink_tokens must be 0 or more and fewer"),
        ("mha", ["--kv-heads", "2", "--l0-schedule", "linear"], "gqa.l0_schedule: 'linear' is not one of"),
        ("mha", ["--kv-heads", "2", "--train-steps", "2", "--calib-file", "{root}/short.txt"], "too short"),
        (
            "mha",
            ["--kv-heads", "2", "--train-steps", "2", "--train-tokens", "-5"],
            "gqa.train_tokens must be 0",
        ),
        (
            "mha",
            ["--kv-heads", "2", "--train-steps", "2", "--train-tokens", "10000000"],
            "fine-tune text needs 10000512",
        ),
    ],
)
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(run_cli, checkpoint, model, extra, message):
    """Through the real entry point (tensorllm.cli.main): exactly one `error: ...` line, exit code 2."""
    out = checkpoint / "bad-out"
    extra = [a.format(root=checkpoint) for a in extra]
    rc, stdout, stderr = run_cli(
        "gqa", checkpoint / model, "--out", out, "--calib-file", checkpoint / "text.txt", *FAST, *extra
    )
    assert rc == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stdout + stderr
    assert not out.exists() and not out.with_name(out.name + ".train").exists()


def test_fine_tune_text_follows_calibration_and_precedes_held_out(run_cli, checkpoint, monkeypatch):
    """--train-tokens T: calibration [0, C), fine-tune [C, C+T), held-out perplexity [C+T, C+T+E)."""
    from tensorllm.cli import gqa_pipeline as pipeline
    from tensorllm.methods.gqa import finetune as finetune_mod  # convert imports finetune lazily
    from tensorllm.methods.gqa.calibrate import calibration_documents, token_stream

    seen = {}
    real_finetune, real_perplexity = finetune_mod.finetune, pipeline.perplexity

    def spy_finetune(model, arch, teacher, shared, tokens, cfg, **kw):
        seen["train"] = tokens.clone()
        return real_finetune(model, arch, teacher, shared, tokens, cfg, **kw)

    def spy_perplexity(model, tokens, *a, **kw):
        seen.setdefault("held_out", tokens.clone())
        return real_perplexity(model, tokens, *a, **kw)

    monkeypatch.setattr(finetune_mod, "finetune", spy_finetune)
    monkeypatch.setattr(pipeline, "perplexity", spy_perplexity)
    out = checkpoint / "ft-text"
    rc, stdout, stderr = run_cli(
        "gqa",
        checkpoint / "mha",
        "--out",
        out,
        "--calib-file",
        checkpoint / "text.txt",
        *FAST,
        "--kv-heads",
        "2",
        "--train-steps",
        "2",
        "--train-tokens",
        "384",
    )
    assert rc == 0, stderr
    ids = token_stream(smollm2_tokenizer(), calibration_documents(str(checkpoint / "text.txt")))
    assert torch.equal(seen["train"].flatten(), ids[512 : 512 + 384])  # (3, 128) after 512 calibration tokens
    assert torch.equal(seen["held_out"].flatten(), ids[896 : 896 + 256])
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["train_tokens"] == 384 and report["summary"]["finetune"]["train_tokens"] == 384
    curve = report["summary"]["finetune"]["curve"]  # the held-out perplexity the export would have, per step
    assert [c["step"] for c in curve] == [0, 1, 2] and curve[0]["value"] > 0
    assert curve[-1]["value"] == pytest.approx(report["after"]["perplexity"], rel=1e-4)
    assert "fine-tune held-out perplexity (step 0 / 2)" in stdout
    png = (out / "finetune.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_eval_task_scores_the_model_before_and_after(run_cli, checkpoint):
    """--eval-task: the task's accuracy and loss before and after, the same numbers `evaluate` gives
    on the original checkpoint and on the written one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tensorllm.eval import evaluate

    out = checkpoint / "gqa-eval"
    rc, stdout, stderr = run_cli(
        "gqa", checkpoint / "mha", "--kv-heads", "1", "--out", out, "--calib-file", checkpoint / "text.txt",
        *FAST, "--eval-task", "wikidata_qa", "--eval-split", "val", "--eval-limit", "6",
    )  # fmt: skip
    assert rc == 0, stderr
    assert "wikidata_qa val accuracy % (6 items)" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["tasks"] == {"split": "val", "limit": 6, "names": ["wikidata_qa"]}
    tok = AutoTokenizer.from_pretrained(checkpoint / "mha")
    for side, path in (("before", checkpoint / "mha"), ("after", out)):
        got = report[side]["tasks"]["wikidata_qa"]
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        want = evaluate(model, tok, "wikidata_qa", "val", 6, progress=False)
        assert got["n"] == 6 and got["accuracy"] == want.accuracy
        assert got["loss"] == pytest.approx(want.loss, rel=1e-5)
    assert report["before"]["tasks"]["wikidata_qa"]["loss"] != report["after"]["tasks"]["wikidata_qa"]["loss"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--eval-task", "nope"], "unknown task 'nope'"),
        (
            ["--eval-task", "wikidata_qa", "--eval-split", "dev"],
            "eval split 'dev' is not one of val, test, all",
        ),
        (["--eval-task", "wikidata_qa", "--eval-limit", "0"], "eval limit must be at least 1"),
    ],
)
def test_bad_eval_task_is_refused_before_any_work(run_cli, checkpoint, extra, message):
    out = checkpoint / "bad-eval"
    rc, _, stderr = run_cli("gqa", checkpoint / "mha", "--kv-heads", "2", "--out", out, *FAST, *extra)
    assert rc == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_the_methods_grouping_flags_reach_the_recipe_and_report(run_cli, checkpoint):
    """--grouping-metric / --grouping-on / --sink-tokens come from the gqa method's compress_flags."""
    out = checkpoint / "gqa-cosine"
    opts = ["--kv-heads", "2", "--grouping-metric", "cosine", "--grouping-on", "values", "--sink-tokens", "4"]
    rc, _, stderr = run_cli(
        "gqa", checkpoint / "mha", "--out", out, "--calib-file", checkpoint / "text.txt", *FAST, *opts
    )
    assert rc == 0, stderr
    step = yaml.safe_load((out / "recipe.yaml").read_text())["steps"][0]
    assert (step["grouping_metric"], step["grouping_on"], step["sink_tokens"]) == ("cosine", "values", 4)
    assert "l0_schedule" not in step  # at its default: left out
    layer = json.loads((out / "report.json").read_text())["layers"][0]
    assert (layer["grouping_metric"], layer["grouping_on"]) == ("cosine", "values")
