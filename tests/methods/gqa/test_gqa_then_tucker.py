"""`steps: [gqa, tucker]` in one recipe: convert to grouped-query attention, then compress the
converted attention with the GQA-aware Tucker tensor."""

import copy

import pytest
import torch
from gqa_models import english_text, logits, rel_diff, smollm2_tokenizer, tiny_llama

import tensorllm

VOCAB = 49152  # the SmolLM2 tokenizer's
IDS = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def gqa_step(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "text.txt"
    path.write_text(english_text(), encoding="utf-8")
    return {"method": "gqa", "kv_heads": 2, "calib_tokens": 512, "seq_len": 128, "calib_file": str(path)}


TUCKER = {"method": "tucker", "layers": "all", "ranks": [48, 12, 4]}


def test_gqa_then_tucker_compresses_the_converted_attention(tokenizer, gqa_step, tmp_path):
    model = tiny_llama(6, 6, vocab=VOCAB)  # multi-head: 6 query and 6 K/V heads, D = 96, d = 16
    one_after_other = copy.deepcopy(model)
    recipe = {"device": "cpu", "steps": [gqa_step, TUCKER]}
    _, report = tensorllm.compress(model, recipe, tokenizer=tokenizer, progress=False)

    assert [s["method"] for s in report.steps] == ["gqa", "tucker"]
    assert model.config.num_key_value_heads == 2
    for rec in report.steps[1]["layers"]:  # the GQA-aware tensor of the converted layer: g = 3
        assert rec["tensor_shape"] == [96, 16, 2 * 3 + 2, 2]
        assert rec["params_before"] == 2 * 96 * 16 * (6 + 2)
        assert sorted(rec["query_order"]) == list(range(6))
    attn = model.model.layers[1].self_attn
    assert attn.k_proj.weight.shape == (2 * 16, 96) and attn.q_proj.weight.shape == (6 * 16, 96)

    # the same as the two steps run one after the other
    for step in (gqa_step, TUCKER):
        recipe = {"device": "cpu", "steps": [step]}
        tensorllm.compress(one_after_other, recipe, tokenizer=tokenizer, progress=False)
    assert rel_diff(logits(model, IDS), logits(one_after_other, IDS)) < 1e-12

    # a plain grouped-query checkpoint
    model.save_pretrained(tmp_path / "out")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float64)
    assert again.config.num_key_value_heads == 2
    assert rel_diff(logits(again, IDS), logits(model, IDS)) < 1e-12
