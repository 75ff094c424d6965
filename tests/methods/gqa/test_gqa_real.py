"""Acceptance on the real SmolLM2-135M: hidden groups are recovered exactly; fine-tuning helps."""

import pytest
import torch

from gqa_models import english_text, logits, rel_diff
from tensorllm.errors import UserError
from tensorllm.methods import registry
from tensorllm.models.expand_kv import expand_kv
from tensorllm.models.io import load_model

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "text.txt"
    path.write_text(english_text(60_000), encoding="utf-8")
    return path


def _apply(loaded, **opts):
    cfg = registry.config_from_dict("gqa", opts)
    ctx = registry.RunContext(device=torch.device("cpu"), seed=0, tokenizer=loaded.tokenizer, progress=False)
    return registry.get("gqa").apply(loaded.model, loaded.arch, cfg, ctx)


def _shuffle_heads(model, arch, seed):
    """Function-preserving shuffle: query heads permuted per layer, their K/V heads moved along."""
    from tensorllm.attention import read_attention, write_attention
    from tensorllm.methods.gqa.heads import permute_kv_heads

    gen = torch.Generator().manual_seed(seed)
    for i in range(model.config.num_hidden_layers):
        w = read_attention(model, arch, i)
        write_attention(model, arch, i, permute_kv_heads(w, torch.randperm(w.kv_heads, generator=gen).tolist()))


def test_expanded_and_shuffled_smollm2_converts_back_exactly(text_file):
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    model, arch = loaded.model, loaded.arch
    ids = loaded.tokenizer(english_text(3000)[:600], return_tensors="pt")["input_ids"][:, :64]
    ref = logits(model, ids)
    expand_kv(model, arch)  # 3 -> 9 K/V heads
    _shuffle_heads(model, arch, seed=0)
    assert rel_diff(logits(model, ids), ref) < 1e-5
    result = _apply(loaded, kv_heads=3, grouping="similarity", align=True, calib_tokens=256, seq_len=256,
                    calib_file=str(text_file))
    assert model.config.num_key_value_heads == 3
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (192, 576)
    assert rel_diff(logits(model, ids), ref) < 1e-3
    for rec in result["layers"]:  # the copies were found: the merge keeps all of the energy
        assert rec["key_energy_kept"] > 1 - 1e-6 and rec["value_energy_kept"] > 1 - 1e-6


def test_real_model_bad_head_counts(text_file):
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    with pytest.raises(UserError, match="does not divide"):
        _apply(loaded, kv_heads=2, calib_file=str(text_file))
    with pytest.raises(UserError, match="fewer than"):
        _apply(loaded, kv_heads=3, calib_file=str(text_file))
