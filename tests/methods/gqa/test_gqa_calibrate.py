"""Streamed calibration statistics equal the cross products of the real K/V activations."""

import torch
from gqa_models import english_text, smollm2_tokenizer, tiny_gptj, tiny_llama

from tensorllm.archs import blocks, get_module, spec_for
from tensorllm.attention import read_attention
from tensorllm.methods.gqa.calibrate import chunk, cross_products, input_grams, token_stream


def _direct(model, arch, ids, path):
    """sum_t y y^T of a projection's outputs, collected with output hooks (the slow way)."""
    outs = {}
    hooks = [
        get_module(b, path).register_forward_hook(lambda m, a, y, i=i: outs.setdefault(i, []).append(y))
        for i, b in enumerate(blocks(model, arch))
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return [torch.cat(outs[i]).reshape(-1, outs[i][0].shape[-1]).double() for i in sorted(outs)]


def test_cross_products_from_the_input_moment_match_the_activations():
    for model in (tiny_llama(4, 2, family="qwen2"), tiny_gptj()):  # with biases; GPT-J without
        arch = spec_for(model.config)
        ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(0))
        grams = input_grams(model, arch, ids, batch_size=2, progress=False)
        assert grams[0][-1, -1] == ids.numel()  # the token count sits in the corner
        for path, which in ((arch.k, "k"), (arch.v, "v")):
            acts = _direct(model, arch, ids, path)
            for i, gram in enumerate(grams):
                w = read_attention(model, arch, i)
                C = cross_products(getattr(w, which), getattr(w, "b" + which), gram)
                assert torch.allclose(C, acts[i].T @ acts[i], rtol=1e-9, atol=1e-9)


def test_calibration_keeps_one_moment_per_layer_and_no_activations():
    """Memory does not grow with the calibration text: one (D+1)^2 sum per layer, hooks removed after."""
    model = tiny_llama(4, 4).train()
    arch = spec_for(model.config)
    kept = []
    for n_seq in (1, 6):
        ids = torch.randint(0, 256, (n_seq, 32), generator=torch.Generator().manual_seed(n_seq))
        grams = input_grams(model, arch, ids, batch_size=2, progress=False)
        assert [tuple(g.shape) for g in grams] == [(65, 65)] * 2 and grams[0].dtype == torch.float64
        kept.append(sum(g.numel() for g in grams))
    assert kept[0] == kept[1]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert model.training  # the caller's mode is restored


def test_token_stream_and_disjoint_chunks():
    tok = smollm2_tokenizer()
    docs = [english_text(3000), "A second document.\n\nWith two paragraphs."]
    ids = token_stream(tok, docs)
    assert (ids == tok.eos_token_id).sum() == 2  # one EOS after each document
    assert tok.decode(ids[-12:]).endswith("A second document.\n\nWith two paragraphs." + tok.eos_token)
    calib = chunk(ids, 100, 32)
    held = chunk(ids, 64, 32, offset=calib.numel())
    assert calib.shape == (3, 32) and held.shape == (2, 32)
    assert torch.equal(torch.cat([calib.flatten(), held.flatten()]), ids[:160])
