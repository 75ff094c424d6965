"""Bad input to loading, compressing and saving: each is a UserError from the Python API and a
single `error: ...` line with exit code 2 from the CLI, with nothing written to --out and the
input left byte-for-byte untouched. Plus atomic saving and --overwrite.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

import tensorllm
from tensorllm.base.errors import UserError

WEIGHTS = "model.safetensors"
GOOD_FLAGS = {"--layers": "0", "--ranks": "8,4,2", "--device": "cpu"}  # tiny tensor: (64, 16, 6, 2)


@dataclass
class Case:
    model: Path  # what the user passes as MODEL
    match: str  # part of the one-line message
    flags: dict = field(default_factory=dict)  # CLI flags overriding GOOD_FLAGS (None drops one)
    out: Path | None = None  # default: <tmp>/out
    load: dict = field(default_factory=dict)  # load_model keyword arguments (API)


def _copy(tiny_ckpt: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(tiny_ckpt, tmp / "model"))


def _damage_weights(path: Path, fn) -> None:
    sd = load_file(path / WEIGHTS)
    fn(sd)
    save_file(sd, path / WEIGHTS, metadata={"format": "pt"})


def _rewrite_header(path: Path, header: bytes, length: int | None = None) -> None:
    data = (path / WEIGHTS).read_bytes()
    n = int.from_bytes(data[:8], "little")
    length = len(header) if length is None else length
    (path / WEIGHTS).write_bytes(length.to_bytes(8, "little") + header + data[8 + n :])


def case_missing(tmp, ckpt, tiny):
    return Case(tmp / "no-such-model", "not found")


def case_no_config(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    (p / "config.json").unlink()
    return Case(p, "no config.json")


def case_truncated(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    data = (p / WEIGHTS).read_bytes()
    (p / WEIGHTS).write_bytes(data[: len(data) * 6 // 10])
    return Case(p, "corrupt safetensors")


def case_padded(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    with open(p / WEIGHTS, "ab") as f:
        f.write(b"\0" * 1000)
    return Case(p, "corrupt safetensors")


def case_garbage_header(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    _rewrite_header(p, bytes(range(7, 71)))
    return Case(p, "corrupt safetensors")


def case_huge_header(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    _rewrite_header(p, b"{}", length=1 << 40)
    return Case(p, "corrupt safetensors")


def case_pickle_only(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    sd = load_file(p / WEIGHTS)
    torch.save(sd, p / "pytorch_model.bin")
    (p / WEIGHTS).unlink()
    return Case(p, "--allow-pickle")


def case_no_weights(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    (p / WEIGHTS).unlink()
    return Case(p, "holds no weights")


def case_unknown_arch(tmp, ckpt, tiny):
    p = tmp / "opt"
    config = transformers.OPTConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        ffn_dim=128,
        vocab_size=128,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
    )
    transformers.OPTForCausalLM(config).save_pretrained(p)
    tiny.tokenizer().save_pretrained(p)
    return Case(p, "unsupported architecture 'opt' (supported: bert, falcon, gemma")


def case_layer_out_of_range(tmp, ckpt, tiny):
    return Case(_copy(ckpt, tmp), "layer 2 is out of range", {"--layers": "2"})


def case_rank_zero(tmp, ckpt, tiny):
    return Case(_copy(ckpt, tmp), "must be positive", {"--ranks": "0,4,2"})


def case_rank_negative(tmp, ckpt, tiny):
    return Case(_copy(ckpt, tmp), "must be positive", {"--ranks": "8,-4,2"})


def case_rank_too_large_mode1(tmp, ckpt, tiny):
    return Case(_copy(ckpt, tmp), "rank 65 is larger than mode 1", {"--ranks": "65,4,2"})


def case_rank_too_large_mode2(tmp, ckpt, tiny):
    return Case(_copy(ckpt, tmp), "rank 17 is larger than mode 2", {"--ranks": "8,17,2"})


def case_rank_too_large_mode3(tmp, ckpt, tiny):
    return Case(_copy(ckpt, tmp), "rank 7 is larger than mode 3", {"--ranks": "8,4,7"})


def case_rate_unreachable(tmp, ckpt, tiny):
    return Case(_copy(ckpt, tmp), "no ranks reach compression rate", {"--ranks": None, "--rate": "1000000"})


def case_bad_dtype(tmp, ckpt, tiny):
    return Case(_copy(ckpt, tmp), "unknown dtype 'float8'", {"--dtype": "float8"}, load={"dtype": "float8"})


def case_out_exists(tmp, ckpt, tiny):
    out = tmp / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    return Case(_copy(ckpt, tmp), "already exists", out=out)


def case_out_inside_input(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    return Case(p, "lies inside the input", out=p / "compressed")


def case_out_is_input(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    return Case(p, "lies inside the input", out=p)


def case_nan(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    _damage_weights(
        p, lambda sd: sd["model.layers.1.mlp.up_proj.weight"].view(-1).__setitem__(5, float("nan"))
    )
    return Case(p, "contain NaN or Inf (first in model.layers.1.mlp.up_proj.weight)")


def case_inf(tmp, ckpt, tiny):
    p = _copy(ckpt, tmp)
    _damage_weights(
        p, lambda sd: sd["model.layers.0.self_attn.k_proj.weight"].view(-1).__setitem__(0, float("-inf"))
    )
    return Case(p, "contain NaN or Inf")


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _state(case: Case, out: Path, tree_hash):
    return (tree_hash(case.model) if case.model.exists() else None, tree_hash(out) if out.exists() else None)


def _api(case: Case, out: Path) -> None:
    """The Python path the CLI takes: load, compress, save."""
    step = {"method": "tucker", "layers": [0], "ranks": [8, 4, 2]}
    flags = {**GOOD_FLAGS, **case.flags}
    if flags.get("--layers"):
        step["layers"] = [int(flags["--layers"])]
    if flags.get("--ranks") is None:
        step.pop("ranks")
        step["rate"] = float(flags["--rate"])
    else:
        step["ranks"] = [int(r) for r in flags["--ranks"].split(",")]
    loaded = tensorllm.load_model(str(case.model), device="cpu", **case.load)
    tensorllm.compress(loaded, {"device": "cpu", "steps": [step]}, progress=False)
    tensorllm.save_checkpoint(loaded, out)


def _cli_args(case: Case, out: Path) -> list[str]:
    args = ["compress", str(case.model), "--out", str(out), "--method", "tucker"]
    for flag, value in {**GOOD_FLAGS, **case.flags}.items():
        if value is not None:
            args.append(f"{flag}={value}")
    return args


def _assert_one_error_line(rc: int, stdout: str, stderr: str, match: str) -> None:
    assert rc == 2, f"exit code {rc}; stderr: {stderr!r}"
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    assert stdout == ""


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_a_user_error_and_writes_nothing(name, tmp_path, tiny_ckpt, tiny, tree_hash, run_cli):
    case = CASES[name](tmp_path, tiny_ckpt, tiny)
    out = case.out or tmp_path / "out"
    before = _state(case, out, tree_hash)

    with pytest.raises(UserError) as exc:
        _api(case, out)
    message = str(exc.value)
    assert case.match in message and "\n" not in message, message
    assert _state(case, out, tree_hash) == before
    assert _leftovers(out) == []

    rc, stdout, stderr = run_cli(*_cli_args(case, out))
    _assert_one_error_line(rc, stdout, stderr, case.match)
    assert _state(case, out, tree_hash) == before
    assert _leftovers(out) == []
    if before[1] is None:
        assert not out.exists()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root reads every directory whatever its mode (see case_no_config instead)",
)
def test_unreadable_model_dir(tmp_path, tiny_ckpt, run_cli):
    p = _copy(tiny_ckpt, tmp_path)
    p.chmod(0)
    try:
        with pytest.raises(UserError, match="not readable"):
            tensorllm.load_model(str(p), device="cpu")
        rc, stdout, stderr = run_cli(*_cli_args(Case(p, ""), tmp_path / "out"))
        _assert_one_error_line(rc, stdout, stderr, "not readable")
        assert not (tmp_path / "out").exists()
    finally:
        p.chmod(0o755)


def test_pickle_checkpoint_loads_when_allowed(tmp_path, tiny_ckpt, tiny):
    case = case_pickle_only(tmp_path, tiny_ckpt, tiny)
    loaded = tensorllm.load_model(str(case.model), device="cpu", allow_pickle=True)
    ref = load_file(tiny_ckpt / WEIGHTS)
    for name, p in loaded.model.state_dict().items():
        assert torch.equal(p, ref[name]), name


@pytest.mark.parametrize("command", ["compress", "info", "expand-kv"])
def test_every_command_reports_a_missing_model_on_one_line(command, tmp_path, run_cli):
    args = [command, str(tmp_path / "nope")]
    if command != "info":
        args += ["--out", str(tmp_path / "out")]
    if command == "compress":
        args += ["--layers", "0", "--ranks", "8,4,2"]
    rc, stdout, stderr = run_cli(*args)
    _assert_one_error_line(rc, stdout, stderr, "not found")
    assert not (tmp_path / "out").exists()


def test_expand_kv_refuses_an_existing_output(tmp_path, tiny_ckpt, run_cli, tree_hash):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree_hash(out), tree_hash(tiny_ckpt)
    rc, stdout, stderr = run_cli("expand-kv", str(tiny_ckpt), "--out", str(out))
    _assert_one_error_line(rc, stdout, stderr, "already exists")
    assert (tree_hash(out), tree_hash(tiny_ckpt)) == before


def test_real_process_exit_code_and_single_line(tmp_path, run_cli_process):
    """`python -m tensorllm.cli` in its own process (not only the in-process runner) behaves the same."""
    rc, stdout, stderr = run_cli_process(
        "compress",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "out"),
        "--layers",
        "0",
        "--ranks",
        "8,4,2",
    )
    _assert_one_error_line(rc, stdout, stderr, "not found")
    assert not (tmp_path / "out").exists()


def test_usage_errors_are_one_line_too(tmp_path, tiny_ckpt, run_cli):
    rc, stdout, stderr = run_cli("compress", str(tiny_ckpt))  # no --out
    _assert_one_error_line(rc, stdout, stderr, "--out")
    rc, stdout, stderr = run_cli(
        "compress", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--ranks", "8,four,2"
    )
    _assert_one_error_line(rc, stdout, stderr, "--ranks '8,four,2'")
    rc, stdout, stderr = run_cli(
        "compress", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--method", "prune", "--layers", "0"
    )
    _assert_one_error_line(rc, stdout, stderr, "unknown method 'prune'")
    assert not (tmp_path / "out").exists()


def test_library_errors_are_folded_onto_one_line(tmp_path, tiny_ckpt, run_cli, tree_hash):
    """A checkpoint without tokenizer files: transformers' multi-line reason is kept, on one line."""
    model = _copy(tiny_ckpt, tmp_path)
    for f in model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    before = tree_hash(model)
    rc, stdout, stderr = run_cli(
        "compress", str(model), "--out", str(tmp_path / "out"), "--layers", "0", "--ranks", "8,4,2"
    )
    _assert_one_error_line(rc, stdout, stderr, f"cannot load '{model}'")
    assert "(1) a `tokenizers` library serialization file" in stderr  # from the reason's second line
    assert len(stderr.strip()) <= len(f"error: cannot load '{model}': ") + 300
    assert tree_hash(model) == before and not (tmp_path / "out").exists()


def test_one_line_collapses_whitespace_and_caps_length():
    from tensorllm.base.errors import one_line

    assert one_line(ValueError("first line\n  second\tline ")) == "first line second line"
    assert one_line(KeyError()) == "KeyError"
    long = one_line(RuntimeError("x" * 1000), limit=50)
    assert len(long) == 50 and long.endswith("...")


# ----------------------------------------------------------------- atomic output


def _failing_save(monkeypatch) -> list[Path]:
    """Make every save_pretrained write one file and then fail, as a full disk would."""
    seen: list[Path] = []

    def save_pretrained(self, save_directory, *args, **kwargs):
        seen.append(Path(save_directory))
        (Path(save_directory) / WEIGHTS).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_pretrained)
    return seen


def test_failed_save_leaves_no_output_api(tmp_path, tiny_ckpt, monkeypatch, tree_hash):
    loaded = tensorllm.load_model(str(tiny_ckpt), device="cpu")
    seen = _failing_save(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="No space"):  # one line; the CLI's: tests/test_faults.py
        tensorllm.save_checkpoint(loaded, out, extra_files={"recipe.yaml": "x"})
    assert seen and seen[0].parent == tmp_path and seen[0] != out  # it wrote into a temporary sibling
    assert not out.exists() and not seen[0].exists()
    assert _leftovers(out) == [] and sorted(os.listdir(tmp_path)) == []

    # with --overwrite, a failed save keeps the old output as it was
    out.mkdir()
    (out / "old.txt").write_text("previous result")
    before = tree_hash(out)
    with pytest.raises(UserError):
        tensorllm.save_checkpoint(loaded, out, overwrite=True)
    assert tree_hash(out) == before and _leftovers(out) == []


def test_cli_writes_a_checkpoint_and_overwrite_replaces_it(tmp_path, tiny_ckpt, tiny, run_cli, tree_hash):
    before = tree_hash(tiny_ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    rc, stdout, stderr = run_cli(
        "compress",
        str(tiny_ckpt),
        "--out",
        str(out),
        "--layers",
        "1",
        "--ranks",
        "8,4,2",
        "--device",
        "cpu",
        "--overwrite",
    )
    assert rc == 0, stderr
    assert "saved checkpoint" in stdout
    assert not (out / "stale.txt").exists()
    assert {"config.json", WEIGHTS, "recipe.yaml", "report.json", "tokenizer.json"} <= set(os.listdir(out))
    assert _leftovers(out) == [] and tree_hash(tiny_ckpt) == before
    report = json.loads((out / "report.json").read_text())
    rec = report["steps"][0]["layers"][0]
    assert rec["layer"] == 1 and rec["ranks"] == [8, 4, 2] and 0 < rec["rel_error"] < 1
    assert rec["compression_rate"] > 1 and rec["seconds"] > 0 and report["seconds"] > 0
    assert {"tensorllm", "torch", "transformers", "python"} <= set(report["versions"])
    assert (
        report["recipe"] == yaml.safe_load((out / "recipe.yaml").read_text())
        and report["recipe"]["version"] == 1
    )

    new, old = load_file(out / WEIGHTS), load_file(tiny_ckpt / WEIGHTS)
    assert new.keys() == old.keys()
    changed = {k for k in new if not torch.equal(new[k], old[k])}
    assert changed == {f"model.layers.1.self_attn.{m}_proj.weight" for m in "qkvo"}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tiny.inputs()
    assert torch.isfinite(tiny.logits(reloaded, ids)).all()

    # a second --overwrite run with the saved recipe gives the same weights
    rc, _, stderr = run_cli(
        "compress", str(tiny_ckpt), "--out", str(out), "--recipe", str(out / "recipe.yaml"), "--overwrite"
    )
    assert rc == 0, stderr
    again = load_file(out / WEIGHTS)
    assert all(torch.equal(again[k], new[k]) for k in new)


def test_eval_dtype_is_bfloat16_on_cuda_only_when_auto():
    from tensorllm.base.devices import eval_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert eval_dtype("auto", cuda) == "bfloat16" and eval_dtype(None, cuda) == "bfloat16"
    assert eval_dtype("auto", cpu) is None  # as stored
    assert eval_dtype("float32", cuda) == "float32" and eval_dtype("float16", cpu) == "float16"


def _hub_cache(root: Path, repo: str, checkpoint: Path) -> Path:
    """A Hugging Face hub cache (models--org--name/{refs/main, snapshots/<rev>/...}) holding `checkpoint`."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    entry = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(checkpoint, entry / "snapshots" / rev)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(rev)
    return root


def test_hub_id_resolves_through_the_hub_cache_offline(
    tmp_path, tiny_ckpt, tiny, run_cli_process, monkeypatch
):
    """The network path (a hub id handed to transformers), with the hub replaced by a local cache."""
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", "tllm-test/tiny-llama", tiny_ckpt)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli_process(
        "compress", "tllm-test/tiny-llama", "--out", str(out), *[x for kv in GOOD_FLAGS.items() for x in kv]
    )
    assert rc == 0, stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    original = transformers.AutoModelForCausalLM.from_pretrained(tiny_ckpt)
    sd, ref = model.state_dict(), original.state_dict()
    assert not torch.equal(
        sd["model.layers.0.self_attn.q_proj.weight"], ref["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(
        sd["model.layers.1.self_attn.q_proj.weight"], ref["model.layers.1.self_attn.q_proj.weight"]
    )

    rc, stdout, stderr = run_cli_process("info", "tllm-test/not-there")
    _assert_one_error_line(rc, stdout, stderr, "'tllm-test/not-there' is no local path or alias")


# ----------------------------------------------------------------- realistic mistakes on the command line


def _recipe_file(tmp: Path, text: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(text)
    return path


_STEP_YAML = "steps:\n  - method: tucker\n    layers: [0]\n    ranks: [8, 4, 2]\n"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--layers", "1,,0", "--ranks", "8,4,2"], "layers '1,,0' has an empty item"),
        (["--layers", "0,", "--ranks", "8,4,2"], "layers '0,' has an empty item"),
        (["--layers", "1-0", "--ranks", "8,4,2"], "layer range '1-0' is empty"),
        (["--layers", "-3", "--ranks", "8,4,2"], "layer -3 is out of range"),
        (["--layers", "0", "--ranks", "0.0,1,1"], "must be positive"),
        (["--layers", "0", "--ranks", "1.5,0.5,1"], "fractional ranks must lie in (0, 1]"),
        (["--layers", "0", "--ranks", "nan,1,1"], "must be positive, got [nan, 1.0, 1.0]"),
        (["--layers", "0", "--rate", "0"], "compression rate must be >= 1"),
        (["--layers", "0", "--rate", "nan"], "compression rate must be >= 1, got nan"),
        (["--recipe", "{tmp}/recipe.yaml", "--layers", "1"], "--recipe cannot be combined with --layers"),
        (["--recipe", "{tmp}/recipe.yaml", "--method", "laser"], "--recipe cannot be combined with --method"),
    ],
)
def test_cli_mistakes_are_one_line_errors(args, match, tmp_path, tiny_ckpt, run_cli, tree_hash):
    _recipe_file(tmp_path, _STEP_YAML)
    before = tree_hash(tiny_ckpt)
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(
        "compress",
        str(tiny_ckpt),
        "--out",
        str(out),
        "--device",
        "cpu",
        *[a.format(tmp=tmp_path) for a in args],
    )
    _assert_one_error_line(rc, stdout, stderr, match)
    assert not out.exists() and _leftovers(out) == [] and tree_hash(tiny_ckpt) == before


@pytest.mark.parametrize(
    "extra, match",
    [
        ("    tol: .nan\n", "tol must be >= 0"),
        ("    colour: red\n", "unknown option(s) colour for method 'tucker'"),
        ("    n_iter_max: many\n", "tucker.n_iter_max: expected an integer, got 'many'"),
        ("version: '1'\n", "recipe version '1' is not supported"),
        ("dtype: [float32]\n", "recipe dtype and device must be strings"),
        ("dtype: float8\n", "unknown dtype 'float8'"),
    ],
)
def test_cli_bad_recipe_files_are_one_line_errors(extra, match, tmp_path, tiny_ckpt, run_cli):
    text = _STEP_YAML + extra if extra.startswith(" ") else extra + _STEP_YAML
    recipe = _recipe_file(tmp_path, text)
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("compress", str(tiny_ckpt), "--out", str(out), "--recipe", str(recipe))
    _assert_one_error_line(rc, stdout, stderr, match)
    assert not out.exists()


def test_out_that_contains_the_input_is_refused_even_with_overwrite(tmp_path, tiny_ckpt, run_cli, tree_hash):
    """Replacing --out would delete the input inside it."""
    work = tmp_path / "work"
    model = Path(shutil.copytree(tiny_ckpt, work / "model"))
    before = tree_hash(work)
    rc, stdout, stderr = run_cli(
        "compress",
        str(model),
        "--out",
        str(work),
        "--layers",
        "0",
        "--ranks",
        "8,4,2",
        "--device",
        "cpu",
        "--overwrite",
    )
    _assert_one_error_line(rc, stdout, stderr, f"output directory {work.resolve()} contains the input")
    loaded = tensorllm.load_model(str(model), device="cpu")
    with pytest.raises(UserError, match="contains the input"):
        tensorllm.save_checkpoint(loaded, work, overwrite=True)
    assert tree_hash(work) == before and _leftovers(work) == []


def test_out_that_is_a_file_is_refused(tmp_path, tiny_ckpt, run_cli):
    out = tmp_path / "out"
    out.write_text("a file of mine")
    rc, stdout, stderr = run_cli(
        "compress",
        str(tiny_ckpt),
        "--out",
        str(out),
        "--layers",
        "0",
        "--ranks",
        "8,4,2",
        "--device",
        "cpu",
        "--overwrite",
    )
    _assert_one_error_line(rc, stdout, stderr, "exists and is not a directory")
    assert out.read_text() == "a file of mine" and _leftovers(out) == []


def test_a_layer_given_as_a_number_in_a_recipe(tmp_path, tiny_ckpt, run_cli):
    recipe = _recipe_file(tmp_path, "steps:\n  - method: tucker\n    layers: 1\n    ranks: [8, 4, 2]\n")
    out = tmp_path / "out"
    rc, _, stderr = run_cli("compress", str(tiny_ckpt), "--out", str(out), "--recipe", str(recipe))
    assert rc == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["layer"] for r in report["steps"][0]["layers"]] == [1]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["steps"][0]["layers"] == [1]


# ----------------------------------------------------------------- remote code and GGUF files


def test_remote_code_never_runs_without_the_flag(tmp_path, tiny_ckpt, run_cli):
    model = _copy(tiny_ckpt, tmp_path)
    marker = tmp_path / "ran"
    (model / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom'\n"
    )
    (model / "config.json").write_text(
        json.dumps({"model_type": "custom", "auto_map": {"AutoConfig": "custom.CustomConfig"}})
    )
    for command in (
        ["info", str(model)],
        ["compress", str(model), "--out", str(tmp_path / "out"), "--layers", "0", "--ranks", "8,4,2"],
        ["expand-kv", str(model), "--out", str(tmp_path / "out")],
    ):
        rc, stdout, stderr = run_cli(*command)
        _assert_one_error_line(rc, stdout, stderr, "(pass --trust-remote-code to run it)")
        assert not marker.exists()
    rc, stdout, stderr = run_cli("info", str(model), "--trust-remote-code")
    _assert_one_error_line(rc, stdout, stderr, "unsupported architecture 'custom'")
    assert marker.exists()  # the flag is what let it run


def _tiny_gguf(tiny, path: Path) -> Path:
    """The tiny Llama written as a float32 GGUF file (llama.cpp names; q/k rows in its RoPE order)."""
    import gguf

    model = tiny.model("llama")
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    tokens = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, cfg.vocab_size)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    blk = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(cfg.num_hidden_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in blk.items()})
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    for name, t in model.state_dict().items():
        n = heads.get(name.split(".")[-2])
        if n:  # Hugging Face -> llama.cpp row order: (n, 2, d/2, D) -> (n, d/2, 2, D)
            t = t.reshape(n, 2, t.shape[0] // n // 2, t.shape[1]).transpose(1, 2).reshape(t.shape)
        w.add_tensor(names[name], t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_output_beside_the_file_and_errors_on_one_line(tmp_path, tiny, run_cli, tree_hash):
    gguf_path = _tiny_gguf(tiny, tmp_path / "tiny.gguf")
    before = tree_hash(gguf_path)
    loaded = tensorllm.load_model(str(gguf_path), device="cpu")
    ids = tiny.inputs()
    assert torch.allclose(tiny.logits(loaded.model, ids), tiny.logits(tiny.model("llama"), ids), atol=1e-5)

    # an error after the GGUF load: one line (transformers' dequantising progress bar is kept off)
    rc, stdout, stderr = run_cli(
        "compress", str(gguf_path), "--out", str(tmp_path / "bad"), "--layers", "5", "--ranks", "8,4,2"
    )
    _assert_one_error_line(rc, stdout, stderr, "layer 5 is out of range")
    # the input is the file: an output in the same folder is fine, the file itself or its folder is not
    rc, _, stderr = run_cli(
        "compress",
        str(gguf_path),
        "--out",
        str(tmp_path / "runs" / "l1"),
        "--layers",
        "1",
        "--ranks",
        "8,4,2",
        "--device",
        "cpu",
    )
    assert rc == 0, stderr
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "l1") is not None
    for out, match in ((gguf_path, "lies inside the input"), (tmp_path, "contains the input")):
        rc, stdout, stderr = run_cli(
            "compress", str(gguf_path), "--out", str(out), "--layers", "1", "--ranks", "8,4,2", "--overwrite"
        )
        _assert_one_error_line(rc, stdout, stderr, match)
    assert tree_hash(gguf_path) == before and not (tmp_path / "bad").exists()
