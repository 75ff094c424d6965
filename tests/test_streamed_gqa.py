"""The streamed MHA -> GQA conversion (tensorllm.streamed_gqa): calibration one decoder layer at a time,
carrying the hidden states, gives the in-memory conversion's output tensor for tensor (and its records),
in fewer K/V heads that plain transformers reloads; an interrupted run continues to the same bytes."""

from __future__ import annotations

import json

import pytest
import transformers
from test_streamed import assert_same_tensors, check_index, in_memory, sharded, strip_seconds

from tensorllm.base.errors import UserError
from tensorllm.streamed import STATE, compress_streamed, partial_dir


@pytest.fixture
def calib(tmp_path):
    words = " ".join(f"w{3 + (i * 37) % 120}" for i in range(600))
    path = tmp_path / "calib.txt"
    path.write_text(words)
    return path


def gqa_recipe(calib, kv_heads: int) -> dict:
    # 8 sequences in batches of 3: the last batch has another shape (its own captured arguments)
    step = {"method": "gqa", "kv_heads": kv_heads, "calib_tokens": 256, "seq_len": 32, "batch_size": 3}
    return {"device": "cpu", "steps": [{**step, "calib_file": str(calib), "restarts": 2}]}


def _summary(step: dict) -> dict:
    return {
        k: v for k, v in step["summary"].items() if not k.startswith("seconds") and k != "hidden_states_on"
    }


@pytest.mark.parametrize(
    "model_type, overrides, kv_heads",
    [("llama", {}, 1), ("starcoder2", {}, 1), ("llama", {"num_key_value_heads": 4}, 2), ("gemma", {}, 1)],
)
def test_streamed_gqa_equals_the_in_memory_conversion(tiny, tmp_path, calib, model_type, overrides, kv_heads):
    src = sharded(tiny, tmp_path / "in", model_type, num_hidden_layers=3, **overrides)
    recipe = gqa_recipe(calib, kv_heads)
    mem = in_memory(src, recipe, tmp_path / "mem")
    out, report = compress_streamed(
        str(src), recipe, tmp_path / "stream", max_shard_size="30KB", progress=False
    )
    assert_same_tensors(out, tmp_path / "mem")
    check_index(out)
    assert strip_seconds(report.steps)[0]["layers"] == strip_seconds(mem.steps)[0]["layers"]
    assert _summary(report.steps[0]) == _summary(mem.steps[0])
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == kv_heads
    ids = tiny.inputs()
    models = [transformers.AutoModelForCausalLM.from_pretrained(tmp_path / d) for d in ("mem", "stream")]
    assert (tiny.logits(models[0], ids) == tiny.logits(models[1], ids)).all()


@pytest.mark.parametrize("metric", ["cosine", "distance"])
def test_streamed_gqa_with_the_grouping_options_equals_the_in_memory_conversion(
    tiny, tmp_path, calib, metric
):
    """Per-token unit cross products and sink tokens stream layer by layer too (query-head view: 4 -> 2)."""
    src = sharded(tiny, tmp_path / "in", "llama", num_hidden_layers=3, num_key_value_heads=4)
    recipe = gqa_recipe(calib, 2)
    recipe["steps"][0].update(grouping_metric=metric, grouping_on="keys", sink_tokens=3)
    mem = in_memory(src, recipe, tmp_path / "mem")
    out, report = compress_streamed(str(src), recipe, tmp_path / "stream", progress=False)
    assert_same_tensors(out, tmp_path / "mem")
    layers = strip_seconds(report.steps)[0]["layers"]
    assert layers == strip_seconds(mem.steps)[0]["layers"] and layers[0]["grouping_metric"] == metric


def test_an_interrupted_streamed_gqa_run_continues_to_the_same_bytes(tiny, tmp_path, calib, monkeypatch):
    import tensorllm.streamed_gqa as sg

    src = sharded(tiny, tmp_path / "in", num_hidden_layers=4)
    recipe = gqa_recipe(calib, 1)
    full, _ = compress_streamed(str(src), recipe, tmp_path / "full", max_shard_size="24KB", progress=False)
    real, calls = sg.plan_layer, []

    def stop_at_layer_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sg, "plan_layer", stop_at_layer_2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        compress_streamed(str(src), recipe, out, max_shard_size="24KB", progress=False)
    assert json.loads((partial_dir(out) / STATE).read_text())["next"] == 2
    monkeypatch.setattr(sg, "plan_layer", real)
    _, report = compress_streamed(
        str(src), recipe, out, max_shard_size="24KB", progress=False, log=lambda m: None
    )
    assert report.extra["stream"]["resumed_at_layer"] == 2
    names = sorted(p.name for p in full.iterdir() if p.name != "report.json")
    assert names == sorted(p.name for p in out.iterdir() if p.name != "report.json")
    assert all((full / n).read_bytes() == (out / n).read_bytes() for n in names)


def test_what_the_streamed_gqa_cannot_do_is_refused_before_work(tiny, tmp_path, calib):
    src = sharded(tiny, tmp_path / "in")
    recipe = gqa_recipe(calib, 1)
    recipe["steps"][0]["train_steps"] = 2
    with pytest.raises(UserError, match="no recovery fine-tune"):
        compress_streamed(str(src), recipe, tmp_path / "out")
    recipe = gqa_recipe(calib, 1)
    recipe["steps"].append({"method": "tucker", "layers": [0], "ranks": [8, 4, 2]})
    with pytest.raises(UserError, match="streams only as a recipe's one step"):
        compress_streamed(str(src), recipe, tmp_path / "out")
    with pytest.raises(UserError, match="must be fewer"):
        compress_streamed(str(src), gqa_recipe(calib, 2), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "in"]


def test_compress_streams_a_gqa_conversion_by_itself_only_without_fine_tune(
    tiny, tmp_path, calib, monkeypatch
):
    import psutil

    from tensorllm.streamed import stream_reason

    src = sharded(tiny, tmp_path / "in")
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=10_000))
    recipe = gqa_recipe(calib, 1)
    assert "would not fit" in stream_reason(str(src), recipe)
    recipe["steps"][0]["train_steps"] = 2
    assert stream_reason(str(src), recipe) is None  # the in-memory path runs the fine-tune
