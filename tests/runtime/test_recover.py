"""Recovery (runtime/recover.py): distilling the original into the factors lowers the KL, trains the
factors only, and `compress --recover` writes it in both formats."""

from __future__ import annotations

import copy
import json

import torch

import tensorllm
from tensorllm.archs import spec_for
from tensorllm.methods.gqa.finetune import _kl
from tensorllm.models.io import Loaded
from tensorllm.runtime.factorised import factorise
from tensorllm.runtime.recover import factor_parameters, recover


def test_recovery_lowers_the_kl_and_trains_only_the_factors(tiny):
    teacher = tiny.model("qwen2")  # q/k/v biases: they must stay as they are
    model = copy.deepcopy(teacher)
    loaded = Loaded(model, None, spec_for(model.config), None, "tiny")
    steps = [
        {"method": "tucker", "layers": "all", "ranks": [8, 4, 3]},
        {"method": "laser", "layers": [0], "matrix": "up", "rank": 4},
    ]
    kept: list = []
    tensorllm.compress(loaded, {"device": "cpu", "steps": steps}, factors=kept, progress=False)
    spec, _ = factorise(loaded, kept)
    tokens = tiny.inputs(batch=8, length=12, seed=5)
    with torch.no_grad():
        before = _kl(model(input_ids=tokens).logits, teacher(input_ids=tokens).logits).item()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    trained = {n for n, _ in factor_parameters(model, spec)}
    assert any(n.endswith(".tucker.u1") for n in trained) and any(n.endswith("up_proj.left") for n in trained)
    result = recover(model, teacher, spec, tokens, steps=40, lr=3e-3, batch_size=8, progress=False)
    with torch.no_grad():
        after = _kl(model(input_ids=tokens).logits, teacher(input_ids=tokens).logits).item()
    assert after < 0.7 * before and result["kl_last"] < result["kl_first"]
    for n, p in model.named_parameters():
        assert torch.equal(p, frozen[n]) != (n in trained), n  # the factors moved, nothing else did
        assert p.requires_grad == grads[n]  # as they were before


def test_compress_recover_writes_both_formats(tiny_ckpt, tmp_path, run_cli, tiny):
    args = ["--layers", "all", "--ranks", "8,4,3", "--device", "cpu", "--recover", "3"]
    for fmt in ("factorised", "dense"):
        rc, _, err = run_cli("compress", tiny_ckpt, *args, "--format", fmt, "--out", tmp_path / fmt)
        assert rc == 0, err
        report = json.loads((tmp_path / fmt / "report.json").read_text())
        assert report["extra"]["recovery"]["steps"] == 3 and report["extra"]["format"] == fmt
    dense = tensorllm.load(tmp_path / "dense").model
    fact = tensorllm.load(tmp_path / "factorised").model
    assert type(dense).__name__ == "LlamaForCausalLM" and type(fact).__name__ == "TensorLLMForCausalLM"
    ids = tiny.inputs()
    a, b = tiny.logits(dense, ids), tiny.logits(fact, ids)
    assert ((a - b).norm() / b.norm()).item() < 1e-5  # the same recovery, two formats


def test_bad_recover_is_one_line(tiny_ckpt, tmp_path, run_cli):
    rc, _, err = run_cli(
        "compress", tiny_ckpt, "--layers", "0", "--ranks", "8,4,3", "--recover", "0", "--out", tmp_path / "o"
    )
    assert rc == 2 and "--recover takes a number of steps >= 1" in err
    rc, _, err = run_cli(
        "compress",
        tiny_ckpt,
        "--layers",
        "0",
        "--variant",
        "trawl",
        "--ranks",
        "8,4,3",
        "--recover",
        "2",
        "--out",
        tmp_path / "o",
    )
    assert rc == 2 and "not variant 'trawl'" in err
