"""Permutation and alignment alone leave the model's function unchanged (float64, < 1e-5)."""

import pytest
import torch
from gqa_models import logits, rel_diff, tiny_gptj, tiny_llama

from tensorllm.archs import spec_for
from tensorllm.attention import read_attention, write_attention
from tensorllm.methods.gqa import align as A
from tensorllm.methods.gqa.calibrate import input_grams
from tensorllm.methods.gqa.convert import key_planes, plan_layer
from tensorllm.methods.gqa.heads import permute_kv_heads, transform_heads

IDS = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))

MODELS = {
    "llama-mha": lambda: tiny_llama(4, 4),
    "llama-gqa": lambda: tiny_llama(8, 4),
    "qwen2-bias": lambda: tiny_llama(4, 4, family="qwen2"),
    "gptj-partial-rotary": lambda: tiny_gptj(rotary_dim=8),
    "gptj-full-rotary": lambda: tiny_gptj(rotary_dim=16),
}


@pytest.mark.parametrize("name", ["llama-mha", "llama-gqa", "qwen2-bias"])
def test_permutation_alone_is_exact(name):
    model = MODELS[name]()
    arch = spec_for(model.config)
    ref = logits(model, IDS)
    gen = torch.Generator().manual_seed(1)
    for i in range(model.config.num_hidden_layers):
        w = read_attention(model, arch, i)
        order = torch.randperm(w.kv_heads, generator=gen).tolist()
        assert order != sorted(order)
        write_attention(model, arch, i, permute_kv_heads(w, order))
    assert rel_diff(logits(model, IDS), ref) < 1e-12


@pytest.mark.parametrize("procrustes", ["svd", "newton_schulz"])
@pytest.mark.parametrize("name", list(MODELS))
def test_alignment_alone_is_exact(name, procrustes, monkeypatch):
    """The calibrated plan's permuted + aligned (unmerged) weights: same logits, different weights;
    with the CPU's SVD Procrustes and with the GPU's Newton-Schulz one."""
    monkeypatch.setitem(A.PROCRUSTES_BY_DEVICE, "cpu", procrustes)
    model = MODELS[name]()
    arch = spec_for(model.config)
    ref = logits(model, IDS)
    grams = input_grams(model, arch, IDS, progress=False)
    planes = key_planes(model, arch, read_attention(model, arch, 0).head_dim)
    for i in range(model.config.num_hidden_layers):
        w = read_attention(model, arch, i)
        old_k = w.k.clone()
        plan = plan_layer(w, grams[i], 2, planes, grouping="contiguous", align=True)
        moved = (plan.aligned.k.to(old_k) - old_k).norm() / old_k.norm()
        assert moved > 0.1  # the alignment is not the identity
        write_attention(model, arch, i, plan.aligned)
    diff = rel_diff(logits(model, IDS), ref)
    assert diff < 1e-5
    assert diff < 1e-10  # in float64 it is exact to round-off


@pytest.mark.parametrize("name,wrong", [("llama-mha", "interleaved"), ("gptj-partial-rotary", "half")])
def test_the_wrong_rope_pairing_breaks_the_model(name, wrong):
    """Negative control: the invariance tests above would notice a wrong pairing."""
    model = MODELS[name]()
    arch = spec_for(model.config)
    ref = logits(model, IDS)
    d = read_attention(model, arch, 0).head_dim
    rdims = key_planes(model, arch, d).pairs.numel()
    planes = A.Planes.for_rope(d, rdims, wrong)
    gen = torch.Generator().manual_seed(2)
    for i in range(model.config.num_hidden_layers):
        w = read_attention(model, arch, i)
        tk = A.best_transform(torch.randn(w.kv_heads, d, d, generator=gen, dtype=torch.float64), planes)
        write_attention(model, arch, i, transform_heads(w, tk, None))
    assert rel_diff(logits(model, IDS), ref) > 1e-3


def test_value_transform_need_not_commute_with_rope():
    """Any orthogonal map of the values, folded into O, keeps the function (they never see RoPE)."""
    model = tiny_llama(4, 4)
    arch = spec_for(model.config)
    ref = logits(model, IDS)
    gen = torch.Generator().manual_seed(3)
    w = read_attention(model, arch, 1)
    tv = A.best_transform(torch.randn(4, 16, 16, generator=gen, dtype=torch.float64), A.Planes.orthogonal(16))
    write_attention(model, arch, 1, transform_heads(w, None, tv))
    assert rel_diff(logits(model, IDS), ref) < 1e-12
