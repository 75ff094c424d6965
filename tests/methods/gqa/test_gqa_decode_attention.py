"""The decode attention kernels compute what transformers' SDPA computes (with and without padding),
and the host-sync-free decode loop produces the greedy tokens of a cache-free reference."""

import pytest
import torch
from gqa_models import tiny_llama

from tensorllm.eval.measure import decode_loop_ms
from tensorllm.models.decode_attention import NAMES, register


def _decode(model, prompt, mask, **kw):
    out = model.generate(
        prompt,
        attention_mask=mask,
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
        **kw,
    )
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


@pytest.mark.parametrize("kernel,decode_q", [("packed", (2, 2, 4, 16)), ("gqa", (2, 8, 1, 16))])
def test_kernel_runs_for_decode_steps_only(monkeypatch, kernel, decode_q):
    """Prefill goes to transformers' SDPA function (once); each decode step of a grouped layer is
    the kernel's own SDPA call on the 2 K/V heads themselves."""
    import torch.nn.functional as F
    from transformers.integrations import sdpa_attention

    kernel_calls, fallback_calls = [], []
    real_sdpa, real_fallback = F.scaled_dot_product_attention, sdpa_attention.sdpa_attention_forward

    def fallback(*a, **kw):
        fallback_calls.append(a[1].shape[2])  # query length
        monkeypatch.setattr(F, "scaled_dot_product_attention", real_sdpa)  # its own SDPA call is not ours
        try:
            return real_fallback(*a, **kw)
        finally:
            monkeypatch.setattr(F, "scaled_dot_product_attention", spy)

    def spy(q, k, v, *a, **kw):
        kernel_calls.append((tuple(q.shape), k.shape[1], kw.get("enable_gqa", False)))
        return real_sdpa(q, k, v, *a, **kw)

    model = tiny_llama(8, 2, layers=1, dtype=torch.float32)
    model.set_attn_implementation(register(kernel))
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", fallback)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    prompt = torch.randint(1, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)
    mask[0, 0] = 0  # padded: every decode step carries a mask
    _decode(model, prompt, mask)
    assert fallback_calls == [5]  # the prefill only: 5 query positions
    assert len(kernel_calls) == 5  # one per decode step (the 6th token needs no forward)
    assert all(q == decode_q and k == 2 and gqa == (kernel == "gqa") for q, k, gqa in kernel_calls)


@pytest.mark.parametrize("kernel", ["gqa", "packed"])
def test_per_head_mask_is_regrouped(kernel):
    """A mask with one row per query head (B, H, 1, L) gives what transformers' SDPA gives."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tensorllm.models.decode_attention import decode_attention

    gen = torch.Generator().manual_seed(5)
    q, k, v = (
        torch.randn(2, 6, 1, 8, generator=gen),
        torch.randn(2, 2, 7, 8, generator=gen),
        torch.randn(2, 2, 7, 8, generator=gen),
    )
    mask = torch.rand(2, 6, 1, 7, generator=gen) > 0.4
    mask[..., 0] = True  # every head attends somewhere
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    want, _ = sdpa_attention_forward(module, q, k, v, mask)
    got, _ = decode_attention(module, q, k, v, mask, kernel=kernel)
    assert got.shape == want.shape == (2, 1, 6, 8) and torch.allclose(got, want, atol=1e-6)


def test_register_refuses_an_unknown_kernel():
    with pytest.raises(ValueError, match="kernel"):
        register("flash")


@torch.no_grad()
def _greedy_without_cache(model, prompt, steps):
    """The independent reference: the whole sequence through the model each step, argmax of the last
    position (no cache, no EOS rule)."""
    seq = prompt
    for _ in range(steps):
        seq = torch.cat(
            [seq, model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1
        )
    return seq[:, prompt.shape[1] :]


@pytest.mark.parametrize("attention", ["sdpa", "gqa", "packed"])
def test_decode_loop_gives_the_greedy_tokens(attention):
    model = tiny_llama(8, 2, layers=2, dtype=torch.float32)
    model.set_attn_implementation(attention if attention == "sdpa" else register(attention))
    prompt = torch.randint(1, 256, (3, 11), generator=torch.Generator().manual_seed(3))
    got = decode_loop_ms(model, prompt, 4, repeats=3, warmup=2, compile=False)
    assert got["tokens"].shape == (3, 14) and torch.equal(
        got["tokens"], _greedy_without_cache(model, prompt, 14)
    )
    assert got["steps_timed"] == 12 and got["ms_per_step"] > 0


@pytest.mark.parametrize("kernel", ["gqa", "packed"])
def test_compiled_decode_loop_gives_the_greedy_tokens(kernel):
    """The compiled step traces as one full graph (as on the GPU) through the static cache and the
    kernel; aot_eager: inductor's C++ build on the CPU depends on the machine's toolchain."""
    model = tiny_llama(8, 2, layers=1, dtype=torch.float32)
    model.set_attn_implementation(register(kernel))
    prompt = torch.randint(1, 256, (2, 7), generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    got = decode_loop_ms(model, prompt, 3, repeats=1, warmup=3, compile=True, backend="aot_eager")
    assert torch.equal(got["tokens"], _greedy_without_cache(model, prompt, 6))


def test_decode_loop_refuses_a_warmup_too_short():
    model = tiny_llama(8, 2, layers=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="warmup"):
        decode_loop_ms(model, torch.ones(1, 4, dtype=torch.long), 2, warmup=0, compile=False)
    with pytest.raises(ValueError, match="warmup"):  # CUDA graphs need a few calls before timing
        decode_loop_ms(model, torch.ones(1, 4, dtype=torch.long), 2, warmup=2)
