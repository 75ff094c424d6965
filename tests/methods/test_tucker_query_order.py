"""The GQA-aware Tucker does not depend on where a group's query heads are stored.

The block mode of the (D, d, 2g+2, Hkv) tensor mixes a group's g query (and output) slots, so with
R3 < 2g+2 the order of the query heads inside one group used to change the compressed model.
Reordering the query heads of a group, with their output heads, is function-preserving (RoPE and
the shared K/V act on every query head alike), so compress(permute(model)) must equal
permute(compress(model)). The multi-head path (g = 1) stays the paper's plain tensor, bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch

import tensorllm
from tensorllm.archs import spec_for
from tensorllm.attention import AttnWeights, read_attention, write_attention
from tensorllm.methods import registry
from tensorllm.methods.tucker import compress_layer
from tensorllm.methods.tucker_tensor import from_tensor, to_tensor
from tensorllm.tensor.tucker import hooi, reconstruct

CPU = torch.device("cpu")
IDS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))


def tiny_gqa(family: str = "llama", heads: int = 6, kv_heads: int = 2):
    """A seeded float64 model with g = heads / kv_heads query heads per K/V head (qwen2: q/k/v biases)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    sizes = dict(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        head_dim=8,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**sizes))
    else:
        model = LlamaForCausalLM(LlamaConfig(**sizes))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    return model.double().eval()


def permute_heads(w: AttnWeights, order: list[int]) -> AttnWeights:
    """Query head n of the result is head order[n] of `w`: rows of q / bq, columns of o (written here,
    not taken from the code under test)."""
    d, H = w.head_dim, w.heads
    rows = [slice(h * d, (h + 1) * d) for h in order]
    q = torch.cat([w.q[r] for r in rows])  # (H*d, D)
    o = torch.cat([w.o[:, r] for r in rows], dim=1)  # (D, H*d)
    bq = None if w.bq is None else torch.cat([w.bq[r] for r in rows])
    assert sorted(order) == list(range(H))
    return w.with_(q=q, o=o, bq=bq)


def inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(input_ids=IDS, use_cache=False).logits


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def tucker(model, ranks, variant="multihead"):
    step = {"method": "tucker", "layers": [1], "ranks": ranks, "variant": variant}
    tensorllm.compress(model, {"device": "cpu", "steps": [step]}, progress=False)
    return model


REVERSE_GROUP_0 = [2, 1, 0, 3, 4, 5]  # g = 3: only the first group's query heads are reordered


CASES = [("multihead", [16, 6, 3]), ("multihead", [48, 8, 2]), ("trawl", [16, 10, 3])]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("variant, ranks", CASES)
def test_reordering_a_groups_query_heads_commutes_with_compression(family, variant, ranks):
    model = tiny_gqa(family)
    arch = spec_for(model.config)
    permuted = copy.deepcopy(model)
    write_attention(permuted, arch, 1, permute_heads(read_attention(model, arch, 1), REVERSE_GROUP_0))
    assert rel(logits(permuted), logits(model)) < 1e-12  # the same function

    a = tucker(copy.deepcopy(model), ranks, variant)
    b = tucker(permuted, ranks, variant)
    assert rel(logits(a), logits(model)) > 1e-3  # it did compress
    assert rel(logits(b), logits(a)) < 1e-5
    # weights: compress(permute(w)) == permute(compress(w))
    wa = permute_heads(read_attention(a, arch, 1), REVERSE_GROUP_0)
    wb = read_attention(b, arch, 1)
    for n in ("q", "k", "v", "o", "bq", "bk", "bv"):
        x, y = getattr(wa, n), getattr(wb, n)
        assert (x is None and y is None) or torch.allclose(x, y, rtol=0, atol=1e-12), n


def test_any_reordering_inside_every_group_gives_the_same_compressed_function():
    w = read_attention(tiny_gqa(heads=8, kv_heads=2), spec_for(tiny_gqa().config), 1)  # g = 4
    cfg = registry.config_from_dict("tucker", {"layers": [1], "ranks": [16, 6, 3]})
    base, rec = compress_layer(w, cfg, CPU)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = [j * 4 + i for j in range(2) for i in torch.randperm(4, generator=gen).tolist()]
        new, rec_p = compress_layer(permute_heads(w, order), cfg, CPU)
        back = permute_heads(new, inverse(order))
        for n in ("q", "k", "v", "o"):
            assert torch.allclose(getattr(back, n), getattr(base, n), rtol=0, atol=1e-12), n
        assert rec_p["rel_error"] == pytest.approx(rec["rel_error"], abs=1e-12)


@pytest.mark.parametrize("variant, ranks", [("multihead", [20, 5, 2]), ("trawl", [20, 12, 2])])
def test_multi_head_attention_is_the_plain_tensor_bit_for_bit(variant, ranks):
    """g = 1: no reordering happens; the result is exactly HOOI on the paper's tensor, rebuilt."""
    w = read_attention(tiny_gqa(heads=6, kv_heads=6), spec_for(tiny_gqa(heads=6, kv_heads=6).config), 1)
    cfg = registry.config_from_dict("tucker", {"layers": [1], "ranks": ranks, "variant": variant})
    new, rec = compress_layer(w, cfg, CPU)
    t = to_tensor(w, variant)
    res = hooi(t, tuple(ranks), (0, 1, 2), n_iter_max=cfg.n_iter_max, tol=cfg.tol, compute_dtype=t.dtype)
    plain = from_tensor(reconstruct(res), w, variant)
    for n in ("q", "k", "v", "o"):
        assert torch.equal(getattr(new, n), getattr(plain, n)), n
    assert "query_order" not in rec
