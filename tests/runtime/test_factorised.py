"""Factorised checkpoints on tiny models: the runtime modules compute what the dense rebuild computes
(both storage forms, every separate-projection architecture, LASER, hybrid recipes), the files shrink
by the reported amount, `tensorllm.load`, plain transformers with trust_remote_code (tensorllm blocked),
`export --dense`, and the bad inputs (one line, exit 2).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import tensorllm
from tensorllm.archs import spec_for
from tensorllm.models.io import Loaded
from tensorllm.runtime import factorised_modules
from tensorllm.runtime.factorised import factorise
from tensorllm.runtime.factorised_modules import FactorProjection, LowRankLinear, TuckerAttention

TUCKER_ALL = {"method": "tucker", "layers": "all", "ranks": [0.5, 0.5, 0.5]}

# tensorllm cannot be imported; plain transformers loads the checkpoint with its own modeling file
PLAIN = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "tensorllm" or name.startswith("tensorllm."):
            raise ImportError("tensorllm is blocked in this process")
sys.meta_path.insert(0, Block())
try:
    import tensorllm
    raise SystemExit("tensorllm was importable")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM
path, ids_file, out_file = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
ids = torch.load(ids_file)
with torch.no_grad():
    logits = model(input_ids=ids).logits
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                         do_sample=False, pad_token_id=1)
torch.save({"logits": logits, "tokens": gen, "class": type(model).__name__}, out_file)
"""


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def factorised_pair(tiny, model_type="llama", steps=(TUCKER_ALL,), **overrides):
    """(dense rebuild, factorised model, storage summary, kept factors) of one recipe on a tiny model."""
    model = tiny.model(model_type, **overrides)
    loaded = Loaded(model, tiny.tokenizer(), spec_for(model.config), None, "tiny")
    kept: list = []
    tensorllm.compress(loaded, {"device": "cpu", "steps": list(steps)}, factors=kept, progress=False)
    dense = copy.deepcopy(model)
    _, summary = factorise(loaded, kept)
    return dense, model, summary, kept


def greedy(model, ids, n=6):
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=1,
        )


@pytest.mark.parametrize("ranks, form", [([0.5, 0.5, 0.5], "core"), ([0.5, 0.5, 1.0], "blocks")])
def test_both_forms_compute_the_dense_rebuild(tiny, ranks, form):
    dense, fact, summary, kept = factorised_pair(tiny, steps=[{**TUCKER_ALL, "ranks": ranks}])
    assert {k.form for k in kept} == {form}
    ids = tiny.inputs()
    assert rel(tiny.logits(fact, ids), tiny.logits(dense, ids)) < 1e-5
    assert torch.equal(greedy(fact, ids), greedy(dense, ids))
    attn = fact.model.layers[0].self_attn
    assert isinstance(attn.tucker, TuckerAttention) and isinstance(attn.q_proj, FactorProjection)
    assert not any(n.endswith(("q_proj.weight", "o_proj.weight")) for n, _ in fact.named_parameters())
    assert summary["factor_params"] == sum(t.numel() for k in kept for t in k.tensors().values())
    assert summary["rate"] > 1


def separate_projection_types(tiny):
    out = []
    for t in tiny.model_types:
        try:
            arch = spec_for(tiny.config(t))
        except Exception:  # a transformers without the family: skipped by its own tests
            continue
        if arch.is_decoder and arch.qkv == "separate" and not arch.conv1d and not arch.is_moe:
            out.append(t)
    return out


def test_every_separate_projection_architecture(tiny):
    """Biases (qwen2), head_dim != D/H (gemma), q/k norms, multi-query: the factorised forward matches."""
    types = separate_projection_types(tiny)
    assert {"llama", "qwen2", "gemma"} <= set(types)
    ids = tiny.inputs()
    for t in types:
        dense, fact, _, _ = factorised_pair(tiny, t)
        assert rel(tiny.logits(fact, ids), tiny.logits(dense, ids)) < 1e-5, t


def test_laser_and_hybrid_keep_two_thin_factors(tiny):
    steps = [
        TUCKER_ALL,
        {"method": "laser", "layers": [1], "matrix": "up", "rank": 8},
        {"method": "laser", "layers": [0], "matrix": "down", "rank": 4},
    ]
    dense, fact, summary, _ = factorised_pair(tiny, steps=steps)
    up = fact.model.layers[1].mlp.up_proj
    assert isinstance(up, LowRankLinear) and up.left.shape == (128, 8) and up.right.shape == (8, 64)
    ids = tiny.inputs()
    assert rel(tiny.logits(fact, ids), tiny.logits(dense, ids)) < 1e-5
    assert summary["modules"] == 4 and summary["forms"] == ["core", "lowrank"]


def test_a_step_rewriting_a_kept_module_is_refused(tiny_ckpt, run_cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n  - {method: tucker, layers: [0], ranks: [0.5, 0.5, 1.0]}\n"
        "  - {method: laser, layers: [0], matrix: q, rank: 4}\n"
    )
    rc, _, err = run_cli(
        "compress",
        tiny_ckpt,
        "--recipe",
        recipe,
        "--format",
        "factorised",
        "--out",
        tmp_path / "o",
        "--device",
        "cpu",
    )
    assert rc == 2 and err.count("\n") == 1 and "step 2 (laser) changes self_attn.q_proj of layer 0" in err


@pytest.fixture(scope="module")
def saved(tiny_ckpt, tmp_path_factory, run_cli_module):
    out = tmp_path_factory.mktemp("fact") / "f"
    rc, _, err = run_cli_module(
        "compress",
        tiny_ckpt,
        "--layers",
        "all",
        "--ranks",
        "0.5,0.5,0.5",
        "--format",
        "factorised",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def run_cli_module(run_cli):
    return run_cli


def test_the_file_shrinks_by_the_reported_amount(saved, tiny_ckpt):
    report = json.loads((saved / "report.json").read_text())
    s = report["extra"]["factorised"]
    assert report["extra"]["format"] == "factorised" and s["modules"] == 2
    before = (tiny_ckpt / "model.safetensors").stat().st_size
    after = (saved / "model.safetensors").stat().st_size
    assert abs((before - after) - (s["dense_bytes"] - s["factor_bytes"])) < 2048  # headers differ
    tensors = load_file(saved / "model.safetensors")
    factor_bytes = sum(t.numel() * t.element_size() for k, t in tensors.items() if ".tucker." in k)
    assert factor_bytes == s["factor_bytes"]
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "tensorllm_llama"
    modeling = (saved / "modeling_tensorllm.py").read_text()
    assert modeling.startswith(open(factorised_modules.__file__).read())  # the runtime modules, verbatim
    assert "from transformers import LlamaForCausalLM as _BaseModel" in modeling


def test_tensorllm_load_and_plain_transformers_agree(saved, tiny, run_python, tmp_path):
    loaded = tensorllm.load(saved)
    assert isinstance(loaded.model.model.layers[1].self_attn.tucker, TuckerAttention)
    assert loaded.arch.name == spec_for(tiny.config("llama")).name
    ids = tiny.inputs()
    torch.save(ids, tmp_path / "ids.pt")
    env_out = tmp_path / "plain.pt"
    proc = run_python(PLAIN, saved, tmp_path / "ids.pt", env_out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = torch.load(env_out)
    assert plain["class"] == "TensorLLMForCausalLM"
    assert rel(plain["logits"], tiny.logits(loaded.model, ids)) < 1e-6
    assert torch.equal(plain["tokens"], greedy(loaded.model, ids))


def test_transformers_without_trust_remote_code_refuses(saved, run_python):
    code = (
        "import sys\nfrom transformers import AutoModelForCausalLM\n"
        "try:\n    AutoModelForCausalLM.from_pretrained(sys.argv[1])\nexcept Exception:\n    sys.exit(3)\n"
    )
    assert run_python(code, saved).returncode == 3


def test_export_dense_is_a_standard_checkpoint(saved, tiny, run_cli, tmp_path):
    rc, _, err = run_cli("export", saved, "--dense", "--out", tmp_path / "d")
    assert rc == 0, err
    import transformers

    dense = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "d").eval()
    assert type(dense).__name__ == "LlamaForCausalLM"
    assert (
        not (tmp_path / "d" / "modeling_tensorllm.py").exists() and (tmp_path / "d" / "recipe.yaml").is_file()
    )
    ids = tiny.inputs()
    assert rel(tiny.logits(dense, ids), tiny.logits(tensorllm.load(saved).model, ids)) < 1e-6
    rc, _, err = run_cli("export", saved, "--out", tmp_path / "e")
    assert rc == 2 and "--dense" in err


# ---------------------------------------------------------------- bad input


def damaged(saved, tmp_path, *, drop=None, reshape=None, config=None):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    tensors = load_file(bad / "model.safetensors")
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = tensors[reshape][:, :-1].contiguous()
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    if config:
        cfg = json.loads((bad / "config.json").read_text())
        config(cfg)
        (bad / "config.json").write_text(json.dumps(cfg))
    return bad


def _add_layer(cfg):
    entry = copy.deepcopy(cfg["tensorllm_factorised"]["modules"][0])
    entry.update(layer=5, path="model.layers.5.self_attn.tucker")
    cfg["tensorllm_factorised"]["modules"].append(entry)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            {"drop": "model.layers.1.self_attn.tucker.u2"},
            "factor model.layers.1.self_attn.tucker.u2 of layer 1",
        ),
        ({"reshape": "model.layers.0.self_attn.tucker.u1"}, "inconsistent factors"),
        ({"config": _add_layer}, "names layer 5 (tucker at model.layers.5.self_attn.tucker) as factorised"),
        ({"config": lambda c: c["tensorllm_factorised"].update(version=9)}, "format version 9"),
    ],
    ids=["missing", "shape", "no-factors", "version"],
)
def test_bad_factorised_checkpoints_are_one_line(saved, tmp_path, run_cli, damage, message):
    bad = damaged(saved, tmp_path, **damage)
    rc, _, err = run_cli("export", bad, "--dense", "--out", tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    with pytest.raises(tensorllm.UserError, match=message.split(" (")[0]):
        tensorllm.load(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "gqa.yaml"], "method 'gqa' has no factorised form"),
        (["--layers", "0", "--variant", "trawl", "--ranks", "4,4,2"], "not variant 'trawl'"),
        (["--layers", "0", "--ranks", "4,4,2", "--format", "sparse"], "--format must be one of"),
    ],
)
def test_no_factorised_form_is_refused_before_any_work(tmp_path, run_cli, args, message):
    """The model does not even exist: the refusal comes before anything is loaded."""
    fmt = [] if "--format" in args else ["--format", "factorised"]
    (tmp_path / "gqa.yaml").write_text("steps:\n  - {method: gqa, kv_heads: 1}\n")
    args = [str(tmp_path / a) if a.endswith(".yaml") else a for a in args]
    rc, _, err = run_cli("compress", tmp_path / "no-model", *args, *fmt, "--out", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_fused_projections_are_refused_after_loading(tmp_path, tiny, run_cli):
    ckpt = tiny.save(tmp_path / "phi3", "phi3")
    rc, _, err = run_cli(
        "compress",
        ckpt,
        "--layers",
        "0",
        "--ranks",
        "0.5,0.5,1",
        "--format",
        "factorised",
        "--out",
        tmp_path / "o",
        "--device",
        "cpu",
    )
    assert rc == 2 and "needs separate q/k/v Linear projections" in err
