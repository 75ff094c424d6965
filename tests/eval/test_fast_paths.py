"""eval/fast_paths.py changes how the eval's forwards compute, never what: on every tiny family (float32,
CPU, left-padded batches) a prefill's logits are bit-identical inside and outside `fast_forward`, a
cached one-token step and `logits_to_keep` forwards agree to float32 rounding, greedy tokens and
gold-answer losses are the same, the output head gets a contiguous input, grouped models really run
the one-token decode attention, a model whose sub-configs mix implementations is left alone, and the
model is left as it was (also after an error, also when entered twice)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from tensorllm.eval import decoder, fast_paths
from tensorllm.models.decode_attention import NAMES

FAMILIES = ["llama", "qwen3", "mixtral", "gemma3_text", "olmo2", "granite", "phi", "falcon", "starcoder2"]


def _batch(length: int = 9):
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13][:length], [20, 21, 22], [30, 31, 32, 33, 34, 35]]
    return decoder.left_pad(prompts, 1, torch.device("cpu"))


@torch.inference_mode()
def _prefill(model, ids, mask, pos):
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)


@torch.inference_mode()
def _step(model, out, ids, mask, pos):
    """One cached one-token step after `out` (a prefill of ids, mask, pos) -> (B, V) logits."""
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    past = {decoder.cache_argument(model): out.past_key_values}
    return model(input_ids=nxt, attention_mask=mask, position_ids=pos[:, -1:] + 1, use_cache=True, **past)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_forwards_compute_the_same_inside(tiny, family):
    _same_inside(tiny.model(family), torch.device("cpu"), exact=True)


@CUDA
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text", "phi"])
def test_gpu_forwards_compute_the_same_inside(tiny, family):
    """On a GPU, float32: the output head's one matmul and the batched one it replaces may round
    differently."""
    _same_inside(tiny.model(family).cuda(), torch.device("cuda"), exact=False)


@torch.inference_mode()
def _kept(model, ids, mask, pos, keep: int) -> torch.Tensor:
    """The last `keep` columns' logits: transformers slices the hidden states, a strided head input."""
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits


def _same_inside(model, device, exact: bool):
    ids, mask, pos = (t.to(device) for t in _batch())
    plain = _prefill(model, ids, mask, pos)
    plain_step = _step(model, plain, ids, mask, pos).logits
    plain_kept = [_kept(model, ids, mask, pos, k) for k in (1, 3)]
    with fast_paths.fast_forward(model):
        fast = _prefill(model, ids, mask, pos)
        fast_step = _step(model, fast, ids, mask, pos).logits
        fast_kept = [_kept(model, ids, mask, pos, k) for k in (1, 3)]
    if exact:  # CPU: the same kernels for the prefill
        assert torch.equal(fast.logits, plain.logits)
    for a, b in ((fast.logits, plain.logits), (fast_step, plain_step), *zip(fast_kept, plain_kept)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_output_head_gets_a_contiguous_input(tiny):
    model = tiny.model("llama")
    head, seen = model.get_output_embeddings(), []
    ids, mask, pos = _batch()
    with fast_paths.fast_forward(model):
        record = head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=2)
        record.remove()
    assert seen == [True]
    assert not head._forward_pre_hooks


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text", "phi"])
def test_greedy_tokens_and_losses_are_the_same(tiny, family, monkeypatch):
    model = tiny.model(family)
    prompts = [[5 + i for i in range(n)] for n in (1, 12, 4, 7, 30)]
    kw = dict(max_new_tokens=6, eos_ids=[2], pad_id=1, progress=False)
    fast = decoder.greedy_generate(model, prompts, **kw)
    fast_nll = decoder.sequence_nll(model, prompts, [1, 5, 2, 3, 10], pad_id=1, progress=False)
    monkeypatch.setattr(decoder, "fast_forward", lambda m: nullcontext())
    assert decoder.greedy_generate(model, prompts, **kw) == fast
    plain_nll = decoder.sequence_nll(model, prompts, [1, 5, 2, 3, 10], pad_id=1, progress=False)
    assert fast_nll == plain_nll  # multi-token passes on a CPU: the same kernels


def test_grouped_models_run_the_packed_decode_attention_and_get_theirs_back(tiny):
    model = tiny.model("llama")
    assert fast_paths.grouped(model) and model.config._attn_implementation == "sdpa"
    with fast_paths.fast_forward(model):
        assert model.config._attn_implementation == NAMES[fast_paths.kernel_for(model)]
        with fast_paths.fast_forward(model):  # re-entered: nothing more
            assert len(model.get_output_embeddings()._forward_pre_hooks) == 1
        assert model.config._attn_implementation == NAMES[fast_paths.kernel_for(model)]
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(KeyError), fast_paths.fast_forward(model):
        raise KeyError("inside")
    assert model.config._attn_implementation == "sdpa"
    assert not model.get_output_embeddings()._forward_pre_hooks
    assert model not in fast_paths._ENTERED


def test_grouped_models_really_run_the_one_token_kernel(tiny, monkeypatch):
    """greedy_generate's attention calls go through models.decode_attention: one-token steps included."""
    from tensorllm.models import decode_attention as module

    model, seen, real = tiny.model("llama"), [], module.decode_attention

    def spy(mod, query, *args, **kwargs):
        seen.append(query.shape[2])  # query tokens of the call
        return real(mod, query, *args, **kwargs)

    monkeypatch.setattr(module, "decode_attention", spy)  # register() binds it on entering
    decoder.greedy_generate(
        model, [[5, 6, 7], [8, 9]], max_new_tokens=3, eos_ids=[], pad_id=1, progress=False
    )
    layers = model.config.num_hidden_layers
    assert seen == [3] * layers + [1] * (2 * layers)  # the prefill, then 2 one-token steps


def test_a_model_mixing_implementations_is_left_alone(tiny):
    """set_attn_implementation sets every sub-config: a vision tower on "eager" must stay so."""
    model = tiny.model("gemma3")
    model.config.vision_config._attn_implementation = "eager"
    with fast_paths.fast_forward(model):
        inside = fast_paths.attention_implementations(model.config)
    after = fast_paths.attention_implementations(model.config)
    assert inside == after and after["vision_config"] == "eager" and after["text_config"] == "sdpa"


def test_models_it_does_not_apply_to_keep_their_attention(tiny):
    mha = tiny.model("falcon-mha")  # one K/V head per query head: nothing to pack
    eager = tiny.model("llama", attn_implementation="eager")
    for model, impl in ((mha, mha.config._attn_implementation), (eager, "eager")):
        with fast_paths.fast_forward(model):
            assert model.config._attn_implementation == impl
