"""Streamed compression on bad input, checked before any layer is written: each case is one `error:` line,
exit code 2, nothing left beside the output (no partial directory) and the input untouched. And runs
that stop half way: interrupted or killed with SIGKILL, the same command continues from the last
completed layer and writes the same bytes as an uninterrupted run; another command starts afresh."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file
from test_streamed import sharded

from tensorllm.base.errors import UserError
from tensorllm.methods import registry
from tensorllm.models.shards import INDEX
from tensorllm.streamed import STATE, compress_streamed, partial_dir

FLAGS = ("--stream", "--layers", "0", "--ranks", "8,4,2", "--device", "cpu")


@pytest.fixture(scope="module")
def shards(tiny, tmp_path_factory) -> Path:
    """A tiny Llama (3 layers) in many shards. Copy it before damaging it."""
    return sharded(tiny, tmp_path_factory.mktemp("shards") / "llama", num_hidden_layers=3)


def _shard(path: Path, n: int = 2) -> Path:
    return sorted(path.glob("model-*.safetensors"))[n]


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _missing(p):
    _shard(p).unlink()


def _truncated(p):
    f = _shard(p)
    f.write_bytes(f.read_bytes()[:-10])


def _bad_header(p):
    f = _shard(p)
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    f.write_bytes(data[:8] + b"{" + b"x" * (n - 1) + data[8 + n :])


def _huge_header(p):
    f = _shard(p)
    f.write_bytes((1 << 40).to_bytes(8, "little") + f.read_bytes()[8:])


def _not_in_shard(p):
    _edit_json(p / INDEX, lambda d: d["weight_map"].update({"model.layers.0.extra.weight": _shard(p).name}))


def _bad_index(p):
    (p / INDEX).write_text("{not json")


def _shape(p):
    _edit_json(p / "config.json", lambda c: c.update(intermediate_size=96))


def _dtype(p):
    _edit_json(p / "config.json", lambda c: c.update(dtype="bfloat16"))


def _renamed(p):  # a layout transformers would convert: streaming cannot copy it as it is
    key = "model.layers.1.mlp.up_proj.weight"
    index = json.loads((p / INDEX).read_text())
    shard = p / index["weight_map"].pop(key)
    sd = load_file(shard)
    sd[key.replace("up_proj", "upp_proj")] = sd.pop(key)
    save_file(sd, shard, metadata={"format": "pt"})
    index["weight_map"][key.replace("up_proj", "upp_proj")] = shard.name
    (p / INDEX).write_text(json.dumps(index))


# damage, extra CLI flags (replacing FLAGS), part of the message. The loader's own check of local
# directories (models/io.py) reads every shard's header first; models/shards.py checks them again.
CASES = {
    "missing shard": (_missing, (), "is missing"),
    "truncated shard": (_truncated, (), "corrupt safetensors file"),
    "corrupt header": (_bad_header, (), "corrupt safetensors file"),
    "header length past the file": (_huge_header, (), "corrupt safetensors file"),
    "index names a tensor the shard lacks": (_not_in_shard, (), "is not in shard"),
    "unreadable index": (_bad_index, (), "unreadable shard index"),
    "shape disagrees with the config": (_shape, (), "the config says [96, 64]"),
    "dtype disagrees with the config": (_dtype, (), "the config says torch.bfloat16"),
    "layout transformers converts": (_renamed, (), "has no tensor model.layers.1.mlp.up_proj.weight"),
    "layer out of range": (None, ("--layers", "7"), "out of range"),
    "rank too large (found on the first layer)": (None, ("--ranks", "100,4,2"), "larger than mode"),
    "a dtype other than the stored one": (None, ("--dtype", "bfloat16"), "needs the in-memory path"),
    "bad shard size": (None, ("--max-shard-size", "lots"), "is not a size"),
    "hub id": ("hub", (), "hub"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_before_any_layer_is_written(case, shards, tmp_path, run_cli, tree_hash):
    damage, extra, match = CASES[case]
    model = Path(shutil.copytree(shards, tmp_path / "in"))
    if callable(damage):
        damage(model)
    before = tree_hash(model)
    flags = dict(zip(FLAGS[1::2], FLAGS[2::2]))
    flags.update(dict(zip(extra[::2], extra[1::2])))
    args = [
        "compress",
        "org/no-such-model" if damage == "hub" else model,
        "--stream",
        "--out",
        tmp_path / "out",
    ]
    rc, _, err = run_cli(*args, *[x for kv in flags.items() for x in kv])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no partial directory
    assert tree_hash(model) == before


def test_not_enough_disk_is_refused_before_work(shards, tmp_path, run_cli, monkeypatch):
    import tensorllm.streamed as streamed

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(streamed.shutil, "disk_usage", lambda p: usage._replace(free=50_000))
    rc, _, err = run_cli("compress", shards, *FLAGS, "--out", tmp_path / "out")
    assert rc == 2 and err.startswith("error: not enough free") and len(err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="not enough free space for the streamed output"):  # exact size
        compress_streamed(str(shards), RECIPE, tmp_path / "out", progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "step, match",
    [
        (
            {"method": "tucker", "layers": "all", "budget": 0.5},
            "method 'tucker' cannot stream",
        ),  # whole-model
        ({"method": "gqa", "kv_heads": 1, "train_steps": 2}, "no recovery fine-tune"),
    ],
)
def test_a_step_that_cannot_stream_is_refused(shards, tmp_path, run_cli, step, match):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"device": "cpu", "steps": [step]}))
    rc, _, err = run_cli("compress", shards, "--recipe", recipe, "--stream", "--out", tmp_path / "out")
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


# ------------------------------------------------------------------------------------ resuming

RECIPE = {
    "device": "cpu",
    "steps": [
        {"method": "tucker", "layers": "all", "ranks": [8, 4, 2]},
        {"method": "laser", "layers": [1, 2], "rho": 0.3},
    ],
}


def _files(folder: Path) -> dict[str, bytes]:
    skip = {"report.json"}  # timings differ between runs
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in skip}


def test_an_interrupted_run_continues_to_the_same_bytes(shards, tmp_path, monkeypatch):
    full, _ = compress_streamed(str(shards), RECIPE, tmp_path / "full", max_shard_size="24KB", progress=False)
    laser = registry.get("laser")
    original = type(laser).apply

    def stop_at_layer_2(self, model, arch, cfg, ctx):
        if cfg.layers == (2,):
            raise KeyboardInterrupt
        return original(self, model, arch, cfg, ctx)

    monkeypatch.setattr(type(laser), "apply", stop_at_layer_2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        compress_streamed(str(shards), RECIPE, out, max_shard_size="24KB", progress=False)
    state = json.loads((partial_dir(out) / STATE).read_text())
    assert state["next"] == 2 and not out.exists()
    monkeypatch.setattr(type(laser), "apply", original)
    logs: list[str] = []
    _, report = compress_streamed(
        str(shards), RECIPE, out, max_shard_size="24KB", progress=False, log=logs.append
    )
    assert "from layer 2" in logs[0] and report.extra["stream"]["resumed_at_layer"] == 2
    assert len(list(out.glob("*.safetensors"))) > 3 and _files(out) == _files(full)
    assert [r["layer"] for r in report.steps[0]["layers"]] == [0, 1, 2]


def test_a_full_disk_mid_run_is_one_line_and_the_run_continues_after(shards, tmp_path, run_cli, monkeypatch):
    import errno

    from tensorllm.models.shards import ShardWriter

    real, seen = ShardWriter.write, []

    def full_at_layer_2(self, name, tensor):
        if "layers.2." in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        seen.append(name)
        return real(self, name, tensor)

    monkeypatch.setattr(ShardWriter, "write", full_at_layer_2)
    out = tmp_path / "out"
    rc, _, err = run_cli("compress", shards, *FLAGS, "--layers", "all", "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "continue from layer 2" in err and partial_dir(out).is_dir()
    monkeypatch.setattr(ShardWriter, "write", real)
    rc, _, err = run_cli("compress", shards, *FLAGS, "--layers", "all", "--out", out)
    assert rc == 0 and "continuing the unfinished run" in err and not partial_dir(out).exists()
    rc, _, err = run_cli("compress", shards, *FLAGS, "--layers", "all", "--out", tmp_path / "fresh")
    assert _files(out) == _files(tmp_path / "fresh")


def test_an_unfinished_run_of_another_command_is_not_continued(shards, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(
        type(registry.get("laser")), "apply", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        compress_streamed(str(shards), RECIPE, out, progress=False)
    monkeypatch.undo()
    logs: list[str] = []
    other = {**RECIPE, "steps": RECIPE["steps"][:1]}
    _, report = compress_streamed(str(shards), other, out, progress=False, log=logs.append)
    assert "another command" in logs[0] and report.extra["stream"]["resumed_at_layer"] is None
    compress_streamed(str(shards), other, tmp_path / "fresh", progress=False)
    assert _files(out) == _files(tmp_path / "fresh")


@pytest.mark.slow
def test_kill_9_then_the_same_command_gives_the_uninterrupted_output(tiny, tmp_path, run_cli_process):
    """A real SIGKILL at an arbitrary point after a few layers (an 8-layer model in ~30 input shards). The
    killed process is the CLI with each Tucker layer slowed by 0.2 s, so that the kill lands mid-run on
    any machine; the uninterrupted and the continuing runs are the plain command."""
    src = sharded(tiny, tmp_path / "in", num_hidden_layers=8, shard="16KB")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    cmd = ["compress", src, "--recipe", recipe, "--stream", "--max-shard-size", "40KB"]
    rc, _, err = run_cli_process(*cmd, "--out", tmp_path / "full")
    assert rc == 0, err
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    slowed = (
        "import sys, time; import tensorllm.methods.tucker as t; real = t.compress_layer\n"
        "def slow(*a, **k):\n    time.sleep(0.2)\n    return real(*a, **k)\n"
        "t.compress_layer = slow; sys.argv = ['tensorllm', *sys.argv[1:]]\n"
        "from tensorllm.cli import main; main()"
    )
    proc = subprocess.Popen([sys.executable, "-c", slowed, *map(str, cmd), "--out", str(out)], env=env)
    state, deadline = partial_dir(out) / STATE, time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["next"] >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial_dir(out).is_dir()
    rc, stdout, err = run_cli_process(*cmd, "--out", out)
    assert rc == 0, err
    assert "continuing the unfinished run" in err
    assert _files(out) == _files(tmp_path / "full")
    assert not partial_dir(out).exists()
