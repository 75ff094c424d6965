"""The decode attention kernels compute what transformers' SDPA computes (with and without padding),
and the host-sync-free decode loop produces the greedy tokens of a cache-free reference."""

import pytest
import torch

from gqa_models import tiny_llama
from tensorllm.methods.gqa.decode_attention import NAMES, register
from tensorllm.methods.gqa.measure import decode_loop_ms


def _decode(model, prompt, mask, **kw):
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.logits)  # (B, T+6), (6, B, V)


@pytest.mark.parametrize("kernel", ["gqa", "packed"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (6, 3), (4, 4)])
def test_decode_attention_matches_sdpa(kernel, cache, heads, kv_heads):
    model = tiny_llama(heads, kv_heads, layers=2, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, 256, (3, 9), generator=gen)
    mask = torch.ones_like(prompt)
    mask[1, :4] = 0  # left padding: the decode steps carry a mask that is not all ones
    kw = {} if cache == "dynamic" else {"cache_implementation": "static"}
    model.set_attn_implementation("sdpa")
    want_seq, want_logits = _decode(model, prompt, mask, **kw)
    model.set_attn_implementation(register(kernel))
    assert model.config._attn_implementation == NAMES[kernel]
    seq, logits = _decode(model, prompt, mask, **kw)
    assert torch.equal(seq, want_seq)
    assert torch.allclose(logits, want_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel,decode_q,decode_k", [("packed", (2, 2, 4, 16), 2), ("gqa", (2, 8, 1, 16), 2)])
def test_kernel_runs_for_decode_steps_only(monkeypatch, kernel, decode_q, decode_k):
    """Prefill goes to transformers' SDPA; each decode step of a grouped layer reads the 2 K/V heads
    themselves (transformers' SDPA would have repeated them to 8 under a mask)."""
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        calls.append((tuple(q.shape), k.shape[1], kw.get("enable_gqa", False)))
        return real(q, k, v, *a, **kw)

    model = tiny_llama(8, 2, layers=1, dtype=torch.float32)
    model.set_attn_implementation(register(kernel))
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    prompt = torch.randint(1, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)
    mask[0, 0] = 0  # padded: every decode step carries a mask
    _decode(model, prompt, mask)
    assert calls[0][0][2] == 5  # the prefill: 5 query positions of 8 heads
    assert all(q == decode_q and k == decode_k for q, k, _ in calls[1:])
    assert all(gqa == (kernel == "gqa") for _, _, gqa in calls[1:])
    assert len(calls) == 6  # one prefill + 5 more steps (the 6th token needs no forward)


def test_register_refuses_an_unknown_kernel():
    with pytest.raises(ValueError, match="kernel"):
        register("flash")


@torch.no_grad()
def _greedy_without_cache(model, prompt, steps):
    """The independent reference: the whole sequence through the model each step, argmax of the last
    position (no cache, no EOS rule)."""
    seq = prompt
    for _ in range(steps):
        seq = torch.cat([seq, model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.shape[1]:]


@pytest.mark.parametrize("attention", ["sdpa", "gqa", "packed"])
def test_decode_loop_gives_the_greedy_tokens(attention):
    model = tiny_llama(8, 2, layers=2, dtype=torch.float32)
    model.set_attn_implementation(attention if attention == "sdpa" else register(attention))
    prompt = torch.randint(1, 256, (3, 11), generator=torch.Generator().manual_seed(3))
    got = decode_loop_ms(model, prompt, 4, repeats=3, warmup=2, compile=False)
    assert got["tokens"].shape == (3, 14) and torch.equal(got["tokens"], _greedy_without_cache(model, prompt, 14))
    assert got["steps_timed"] == 12 and got["ms_per_step"] > 0


def test_compiled_decode_loop_gives_the_greedy_tokens():
    """The compiled step traces as one full graph (as on the GPU) through the static cache and the
    kernel; aot_eager: inductor's C++ build on the CPU depends on the machine's toolchain."""
    model = tiny_llama(8, 2, layers=1, dtype=torch.float32)
    model.set_attn_implementation(register("gqa"))
    prompt = torch.randint(1, 256, (2, 7), generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    got = decode_loop_ms(model, prompt, 3, repeats=1, warmup=3, compile=True, backend="aot_eager")
    assert torch.equal(got["tokens"], _greedy_without_cache(model, prompt, 6))


def test_decode_loop_refuses_an_empty_warmup():
    model = tiny_llama(8, 2, layers=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="warmup"):
        decode_loop_ms(model, torch.ones(1, 4, dtype=torch.long), 2, warmup=0, compile=False)
