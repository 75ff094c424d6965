"""The packed decode attention computes what transformers' SDPA computes, with and without padding."""

import pytest
import torch

from gqa_models import tiny_llama
from tensorllm.methods.gqa.packed_attention import NAME, register


def _decode(model, prompt, mask, **kw):
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.logits)  # (B, T+6), (6, B, V)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (6, 3), (4, 4)])
def test_packed_decode_matches_sdpa(cache, heads, kv_heads):
    model = tiny_llama(heads, kv_heads, layers=2, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, 256, (3, 9), generator=gen)
    mask = torch.ones_like(prompt)
    mask[1, :4] = 0  # left padding: the decode steps carry a mask that is not all ones
    kw = {} if cache == "dynamic" else {"cache_implementation": "static"}
    model.set_attn_implementation("sdpa")
    want_seq, want_logits = _decode(model, prompt, mask, **kw)
    model.set_attn_implementation(register())
    assert model.config._attn_implementation == NAME
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
