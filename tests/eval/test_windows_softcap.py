"""Sliding windows and soft-capping are the model's own: batched evaluation, calibration and the fast
decode attention compute what transformers' own forward computes, one unpadded prompt at a time.

Tiny models with a window (4) shorter than every prompt: Gemma-2 (window on every other layer,
attention soft-capping made strong: 0.5, final soft-capping 1.0), Gemma-3 (multi-query, one sliding
and one global layer) and Qwen3 with its sliding window on. A control shows the window changes the
numbers here, so agreeing is not vacuous.
"""

from __future__ import annotations

import pytest
import torch

from tensorllm.archs import blocks, spec_for
from tensorllm.eval import decoder
from tensorllm.eval.measure import decode_loop_ms
from tensorllm.methods.gqa.calibrate import input_grams
from tensorllm.models.decode_attention import register

WINDOWED = {
    "gemma2": dict(attn_logit_softcapping=0.5, final_logit_softcapping=1.0),
    "gemma3_text": dict(),
    "qwen3": dict(
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
        layer_types=["sliding_attention", "full_attention"],
    ),
}
EOS = 2


def _model(tiny, family, **kw):
    model = tiny.model(family, **{**WINDOWED[family], **kw})
    model.generation_config.pad_token_id = 1
    return model


def _prompts(n: int = 5, seed: int = 3) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, 128, (int(torch.randint(7, 15, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(n)
    ]


@torch.no_grad()
def _nll_alone(model, seq: list[int], scored: int) -> float:
    logits = model(input_ids=torch.tensor([seq])).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
    return float(-logp[-scored:].sum())


@pytest.mark.parametrize("family", list(WINDOWED))
def test_the_window_and_caps_matter_here(tiny, family):
    """Control: the same weights without the window (or the caps) give other losses on these prompts."""
    seq = _prompts(1)[0]
    windowed = _nll_alone(_model(tiny, family), seq, 4)
    no_window = dict(sliding_window=64, **({"attn_logit_softcapping": None} if family == "gemma2" else {}))
    assert abs(_nll_alone(_model(tiny, family, **no_window), seq, 4) - windowed) > 1e-3


@pytest.mark.parametrize("family", list(WINDOWED))
def test_batched_left_padded_scoring_equals_the_model_alone(tiny, family):
    model = _model(tiny, family)
    seqs = _prompts()
    got = decoder.sequence_nll(model, seqs, [3] * len(seqs), pad_id=1, batch_size=8, progress=False)
    for seq, (nll, count) in zip(seqs, got):
        assert count == 3 and abs(nll - _nll_alone(model, seq, 3)) < 1e-4
    lp = decoder.last_token_logprobs(model, seqs, [5, 6, 7], pad_id=1, batch_size=8, progress=False)
    for r, seq in enumerate(seqs):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
        alone = torch.log_softmax(last, dim=-1)[[5, 6, 7]]
        assert torch.allclose(lp[r], alone, atol=1e-4)


@pytest.mark.parametrize("family", list(WINDOWED))
def test_batched_greedy_generation_with_a_cache_equals_generate_alone(tiny, family):
    model = _model(tiny, family)
    prompts = _prompts()
    got = decoder.greedy_generate(
        model, prompts, max_new_tokens=8, eos_ids=[EOS], pad_id=1, batch_size=8, progress=False
    )
    for prompt, tokens in zip(prompts, got):
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=8,
            min_new_tokens=1,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=1,
        )
        want = out[0, len(prompt) :].tolist()
        want = want[: want.index(EOS) + 1] if EOS in want else want
        assert tokens == want


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_calibration_statistics_come_from_the_models_own_forward(tiny, family):
    """The K/V input second moment of layer 1 equals the one from transformers' hidden states."""
    model = _model(tiny, family)
    arch = spec_for(model.config)
    ids = torch.tensor([p[:7] for p in _prompts(4)])  # (4, 7): longer than the window
    grams = input_grams(model, arch, ids, progress=False)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1]  # input of layer 1
        x = blocks(model, arch)[1].input_layernorm(hidden).reshape(-1, hidden.shape[-1]).double()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # [x; 1]
    assert torch.allclose(grams[1], x1.T @ x1, rtol=1e-5, atol=1e-6)


def _generate(model, prompt, mask, **kw):
    out = model.generate(
        prompt,
        attention_mask=mask,
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        pad_token_id=1,
        output_logits=True,
        return_dict_in_generate=True,
        **kw,
    )
    return out.sequences, torch.stack(out.logits)  # (B, T+6), (6, B, V)


@pytest.mark.parametrize("kernel", ["gqa", "packed"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_the_fast_decode_attention_keeps_windows_and_caps(tiny, family, cache, kernel):
    model = _model(tiny, family)
    prompt = torch.randint(3, 128, (3, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0  # left padding
    kw = {} if cache == "dynamic" else {"cache_implementation": "static"}
    model.set_attn_implementation("eager")  # transformers' reference (Gemma-2's sdpa has no soft-capping)
    want_seq, want_logits = _generate(model, prompt, mask, **kw)
    model.set_attn_implementation(register(kernel))
    seq, logits = _generate(model, prompt, mask, **kw)
    assert torch.equal(seq, want_seq)
    assert torch.allclose(logits, want_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_the_sync_free_decode_loop_equals_a_cache_free_reference_beyond_the_window(tiny, family):
    model = _model(tiny, family)
    prompt = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(6))
    model.set_attn_implementation(register("gqa"))
    got = decode_loop_ms(model, prompt, 3, warmup=4, compile=False)["tokens"]  # 7 tokens: past the window
    model.set_attn_implementation("eager")
    ids = prompt
    with torch.no_grad():
        for _ in range(got.shape[1]):  # the whole sequence again at every step: no cache, no window reuse
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, ids[:, prompt.shape[1] :])
