"""The packed decode attention computes what transformers' SDPA computes, with and without padding."""

import pytest
import torch

from gqa_models import tiny_llama
from tensorllm.methods.gqa import packed_attention as P
from tensorllm.methods.gqa.packed_attention import NAME, SPLIT_NAME, register


def _decode(model, prompt, mask, **kw):
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.logits)  # (B, T+6), (6, B, V)


@pytest.mark.parametrize("kernel", ["sdpa", "split"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (6, 3), (4, 4)])
def test_packed_decode_matches_sdpa(kernel, cache, heads, kv_heads):
    model = tiny_llama(heads, kv_heads, layers=2, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, 256, (3, 9), generator=gen)
    mask = torch.ones_like(prompt)
    mask[1, :4] = 0  # left padding: the decode steps carry a mask that is not all ones
    kw = {} if cache == "dynamic" else {"cache_implementation": "static"}
    model.set_attn_implementation("sdpa")
    want_seq, want_logits = _decode(model, prompt, mask, **kw)
    model.set_attn_implementation(register(kernel))
    assert model.config._attn_implementation == (NAME if kernel == "sdpa" else SPLIT_NAME)
    seq, logits = _decode(model, prompt, mask, **kw)
    assert torch.equal(seq, want_seq)
    assert torch.allclose(logits, want_logits, atol=1e-5, rtol=1e-5)


def test_packed_path_runs_for_decode_steps_only(monkeypatch):
    """Prefill goes to transformers' SDPA; each decode step of a grouped layer takes the packed call."""
    import torch.nn.functional as F

    shapes = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        shapes.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, *a, **kw)

    model = tiny_llama(8, 2, layers=1, dtype=torch.float32)
    model.set_attn_implementation(register())
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    prompt = torch.randint(1, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    _decode(model, prompt, torch.ones_like(prompt))
    assert shapes[0][0][2] == 5  # the prefill: 5 query positions of 8 heads
    assert all(q == (2, 2, 4, 16) for q, _ in shapes[1:])  # decode: 2 K/V heads x 4 query rows each
    assert len(shapes) == 6  # one prefill + 5 more steps (the 6th token needs no forward)


@pytest.mark.parametrize("length", [64, 67, 5])  # 16 chunks; 16 chunks + 3 left over; shorter than 16
def test_split_attention_is_attention(length):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 4, 8, generator=gen), torch.randn(2, 3, length, 8, generator=gen),
               torch.randn(2, 3, length, 5, generator=gen))
    mask = torch.rand(2, 1, 1, length, generator=gen) > 0.3
    mask[..., 0] = True  # every row attends somewhere
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(P._split_attention(q, k, v, mask, 8 ** -0.5), want, atol=1e-5)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    assert torch.allclose(P._split_attention(q, k, v, additive, 8 ** -0.5), want, atol=1e-5)
    assert torch.allclose(P._split_attention(q, k, v, None, 8 ** -0.5),
                          torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)


def test_register_refuses_an_unknown_kernel():
    with pytest.raises(ValueError, match="kernel"):
        register("flash")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_attention_in_half_precision_stays_close_and_finite(dtype):
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 4, 64, generator=gen), torch.randn(2, 2, 256, 64, generator=gen),
               torch.randn(2, 2, 256, 64, generator=gen))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # float32 reference
    got = P._split_attention(q.to(dtype), k.to(dtype), v.to(dtype), None, 64 ** -0.5)
    assert got.dtype == dtype and (got.float() - want).abs().max() < 0.02
    q[..., 0], k[..., 0] = 300.0, 300.0  # unscaled q.k ~ 90,000: past float16's range unless q is scaled first
    big = P._split_attention(q.to(dtype), k.to(dtype), v.to(dtype), None, 64 ** -0.5)
    assert torch.isfinite(big).all()
