"""Streamed compression (tensorllm.streamed): from many small input shards, layer by layer, the output
equals tensor for tensor what the in-memory path writes (tiny models of several layouts, and the real
SmolLM2 re-saved as many shards), its shards and index are sound, it reloads in plain transformers
with the in-memory model's logits, and `compress` picks streaming by itself only when it must."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors import safe_open

import tensorllm
from tensorllm.models.shards import INDEX
from tensorllm.streamed import compress_streamed

HYBRID = [
    {"method": "tucker", "layers": [0], "ranks": [0.5, 0.5, 1.0]},
    {"method": "laser", "layers": [0, 2], "rho": 0.2},
]


def sharded(tiny, path: Path, model_type: str = "llama", shard: str = "20KB", **overrides) -> Path:
    """A tiny checkpoint saved as many small shards (with an index), plus its tokenizer."""
    tiny.model(model_type, **overrides).save_pretrained(path, max_shard_size=shard)
    tiny.tokenizer().save_pretrained(path)
    assert (path / INDEX).is_file()
    return path


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


def strip_seconds(steps: list[dict]) -> list[dict]:
    out = []
    for s in steps:
        layers = [{k: v for k, v in r.items() if k != "seconds"} for r in s["layers"]]
        out.append({**{k: v for k, v in s.items() if k != "seconds"}, "layers": layers})
    return json.loads(json.dumps(out))


def in_memory(src: Path, recipe: dict, out: Path):
    loaded = tensorllm.load_model(str(src), device="cpu")
    _, report = tensorllm.compress(loaded, recipe, progress=False)
    tensorllm.save_checkpoint(loaded, out)
    return report


def check_index(folder: Path) -> None:
    """The index names every tensor of every shard once, and its total size is the tensors' bytes."""
    index = json.loads((folder / INDEX).read_text())
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == files
    total = 0
    for name in files:
        with safe_open(str(folder / name), framework="pt") as fh:
            for k in fh.keys():
                assert index["weight_map"][k] == name
                t = fh.get_tensor(k)
                total += t.numel() * t.element_size()
    assert len(index["weight_map"]) == len(tensors(folder)) and index["metadata"]["total_size"] == total


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "bert"])
def test_streamed_output_equals_the_in_memory_path(tiny, tmp_path, model_type):
    layers = {"n_layer": 3} if model_type == "gpt2" else {"num_hidden_layers": 3}
    src = sharded(tiny, tmp_path / "in", model_type, **layers)
    recipe = {"device": "cpu", "steps": HYBRID}
    mem = in_memory(src, recipe, tmp_path / "mem")
    out, report = compress_streamed(
        str(src), recipe, tmp_path / "stream", max_shard_size="30KB", progress=False
    )
    assert_same_tensors(out, tmp_path / "mem")
    assert strip_seconds(report.steps) == strip_seconds(mem.steps)
    assert report.model == mem.model
    assert yaml.safe_load((out / "recipe.yaml").read_text())["steps"][0]["method"] == "tucker"
    assert json.loads((out / "report.json").read_text())["extra"]["stream"]["shards"] > 1
    check_index(out)
    assert not list(tmp_path.glob(".*"))  # the partial directory was renamed into place


def test_streamed_output_reloads_with_the_in_memory_logits(tiny, tmp_path):
    src = sharded(tiny, tmp_path / "in", num_hidden_layers=3)
    recipe = {"device": "cpu", "steps": HYBRID}
    in_memory(src, recipe, tmp_path / "mem")
    compress_streamed(str(src), recipe, tmp_path / "stream", max_shard_size="30KB", progress=False)
    ids = tiny.inputs()
    logits = [
        tiny.logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / d), ids)
        for d in ("mem", "stream")
    ]
    assert torch.equal(logits[0], logits[1])
    before = tiny.logits(transformers.AutoModelForCausalLM.from_pretrained(src), ids)
    assert not torch.equal(before, logits[1])  # the recipe did change the model


def test_untouched_layers_and_tensors_are_copied_byte_for_byte(tiny, tmp_path):
    src = sharded(tiny, tmp_path / "in", num_hidden_layers=3)
    recipe = {"device": "cpu", "steps": [{"method": "laser", "layers": [1], "rho": 0.5}]}
    out, _ = compress_streamed(str(src), recipe, tmp_path / "out", progress=False)
    before, after = tensors(src), tensors(out)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["model.layers.1.mlp.up_proj.weight"]
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert (
        not (out / INDEX).exists() and (out / "model.safetensors").is_file()
    )  # one shard, as save_pretrained


def test_a_single_file_checkpoint_streams_too(tiny, tmp_path):
    src = tiny.save(tmp_path / "in", "llama", num_hidden_layers=3)
    recipe = {"device": "cpu", "steps": [HYBRID[1]]}
    in_memory(src, recipe, tmp_path / "mem")
    compress_streamed(str(src), recipe, tmp_path / "stream", max_shard_size="16KB", progress=False)
    assert_same_tensors(tmp_path / "stream", tmp_path / "mem")
    check_index(tmp_path / "stream")


def test_compress_streams_by_itself_only_when_the_weights_would_not_fit(tiny, tmp_path, run_cli, monkeypatch):
    import psutil

    src = sharded(tiny, tmp_path / "in")
    args = ("compress", src, "--layers", "0", "--ranks", "8,4,2", "--device", "cpu")
    rc, out, err = run_cli(*args, "--out", tmp_path / "a")
    assert rc == 0, err
    assert "streaming" not in out and "streamed" not in out
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=10_000))
    rc, out, err = run_cli(*args, "--out", tmp_path / "b")
    assert rc == 0, err
    assert "streaming layer by layer: the weights" in out and "10.0 KB" not in out
    assert_same_tensors(tmp_path / "a", tmp_path / "b")
    rc, out, err = run_cli(*args, "--out", tmp_path / "c", "--no-stream")
    assert rc == 0 and "streaming" not in out


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_in_many_shards_streams_to_the_in_memory_output(smollm2, tmp_path, run_cli):
    src = tmp_path / "smollm2"
    smollm2.model.save_pretrained(src, max_shard_size="40MB")
    smollm2.tokenizer.save_pretrained(src)
    assert len(list(src.glob("*.safetensors"))) >= 10
    recipe = tmp_path / "hybrid.yaml"
    steps = [
        {"method": "tucker", "layers": [0, 16], "ranks": [288, 48, 4]},
        {"method": "tucker", "layers": [29], "ranks": "auto"},
        {"method": "laser", "layers": [16, 27], "matrix": "up", "rho": 0.1},
    ]
    recipe.write_text(yaml.safe_dump({"device": "cpu", "steps": steps}))
    for mode, out in (("--no-stream", "mem"), ("--stream", "stream")):
        rc, _, err = run_cli(
            "compress", src, "--recipe", recipe, "--out", tmp_path / out, mode, "--max-shard-size", "100MB"
        )
        assert rc == 0, err
    assert_same_tensors(tmp_path / "stream", tmp_path / "mem")
    check_index(tmp_path / "stream")
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("mem", "stream")]
    assert strip_seconds(reports[0]["steps"]) == strip_seconds(reports[1]["steps"])
