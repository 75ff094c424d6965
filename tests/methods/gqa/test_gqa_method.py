"""The registered `gqa` method on tiny models: exact recovery of hidden groups, export, bad input."""

import json

import pytest
import torch
from gqa_models import (
    english_text,
    hide_structure,
    logits,
    rel_diff,
    smollm2_tokenizer,
    tiny_gpt2,
    tiny_gptj,
    tiny_llama,
)

from tensorllm.archs import spec_for
from tensorllm.base.errors import UserError
from tensorllm.methods import registry
from tensorllm.models.expand_kv import expand_kv

VOCAB = 49152  # the SmolLM2 tokenizer's


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "text.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


def apply(model, tokenizer, **opts):
    cfg = registry.config_from_dict("gqa", opts)
    ctx = registry.RunContext(device=torch.device("cpu"), seed=0, tokenizer=tokenizer, progress=False)
    return registry.get("gqa").apply(model, spec_for(model.config), cfg, ctx)


def _ids(n=40):
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("heads,kv", [(4, 2), (6, 2), (8, 2)])
def test_hidden_groups_are_found_and_merged_exactly(tokenizer, text_file, heads, kv):
    """GQA -> MHA -> shuffle + rotate heads -> gqa(kv): the original GQA model again."""
    model = tiny_llama(heads, kv, vocab=VOCAB)
    ids = _ids()
    ref = logits(model, ids)
    expand_kv(model, spec_for(model.config))
    hide_structure(model, seed=heads)
    assert rel_diff(logits(model, ids), ref) < 1e-10  # still the same function
    result = apply(model, tokenizer, kv_heads=kv, calib_tokens=512, seq_len=128, calib_file=str(text_file))
    assert model.config.num_key_value_heads == kv
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (kv * 16, model.config.hidden_size)
    assert rel_diff(logits(model, ids), ref) < 1e-8
    for rec in result["layers"]:
        assert rec["key_energy_kept"] == pytest.approx(1.0, abs=1e-9)
        assert rec["value_energy_kept"] == pytest.approx(1.0, abs=1e-9)
        assert rec["key_energy_kept_unaligned"] < 0.9  # the random rotations hid the copies
    json.dumps(result)  # JSON-able


def test_without_alignment_the_hidden_copies_do_not_merge(tokenizer, text_file):
    model = tiny_llama(4, 2, vocab=VOCAB)
    ids = _ids()
    ref = logits(model, ids)
    expand_kv(model, spec_for(model.config))
    hide_structure(model, seed=1)
    apply(model, tokenizer, kv_heads=2, align=False, calib_tokens=512, seq_len=128, calib_file=str(text_file))
    assert rel_diff(logits(model, ids), ref) > 1e-2


def test_gqa_input_with_kv_heads_not_divisible_uses_the_query_head_view(tokenizer, text_file):
    model = tiny_llama(6, 3, vocab=VOCAB)  # 3 K/V heads -> 2: groups of query heads
    result = apply(model, tokenizer, kv_heads=2, calib_tokens=256, seq_len=128, calib_file=str(text_file))
    assert model.config.num_key_value_heads == 2
    assert result["layers"][0]["unit"] == "query_head"
    assert sorted(h for g in result["layers"][0]["groups"] for h in g) == list(range(6))
    logits(model, _ids())  # runs


def test_export_loads_in_plain_transformers_and_generates(tokenizer, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from tensorllm.models.io import Loaded, save_checkpoint

    model = tiny_llama(4, 4, vocab=VOCAB, dtype=torch.float32, family="qwen2")
    apply(model, tokenizer, kv_heads=2, calib_tokens=512, seq_len=128, calib_file=str(text_file))
    out = save_checkpoint(Loaded(model, tokenizer, spec_for(model.config), None, "tiny"), tmp_path / "gqa")
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 2
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    assert again.model.layers[1].self_attn.v_proj.weight.shape == (32, 64)
    assert again.model.layers[1].self_attn.k_proj.bias.shape == (32,)
    ids = _ids(24)
    assert rel_diff(logits(again, ids), logits(model, ids)) < 1e-6
    gen = again.generate(ids[:1], max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 29)


def test_grouping_is_deterministic(tokenizer, text_file):
    a, b = tiny_llama(8, 8, vocab=VOCAB), tiny_llama(8, 8, vocab=VOCAB)
    ra = apply(a, tokenizer, kv_heads=2, calib_tokens=256, seq_len=128, calib_file=str(text_file), restarts=4)
    rb = apply(b, tokenizer, kv_heads=2, calib_tokens=256, seq_len=128, calib_file=str(text_file), restarts=4)
    assert [r["groups"] for r in ra["layers"]] == [r["groups"] for r in rb["layers"]]
    assert torch.equal(a.model.layers[0].self_attn.k_proj.weight, b.model.layers[0].self_attn.k_proj.weight)


def test_similarity_grouping_keeps_more_energy_than_contiguous(tokenizer, text_file):
    kept = {}
    for grouping in ("similarity", "contiguous"):
        model = tiny_llama(8, 8, vocab=VOCAB)
        r = apply(
            model,
            tokenizer,
            kv_heads=2,
            grouping=grouping,
            calib_tokens=256,
            seq_len=128,
            calib_file=str(text_file),
        )
        kept[grouping] = r["summary"]["mean_key_energy_kept"] + r["summary"]["mean_value_energy_kept"]
    assert kept["similarity"] >= kept["contiguous"]


@pytest.mark.parametrize(
    "model_fn,opts,message",
    [
        (lambda: tiny_llama(6, 6, vocab=VOCAB), {"kv_heads": 4}, "does not divide the 6 query heads"),
        (
            lambda: tiny_llama(4, 4, vocab=VOCAB),
            {"kv_heads": 4},
            "must be fewer than the model's 4 K/V heads",
        ),
        (
            lambda: tiny_llama(8, 2, vocab=VOCAB),
            {"kv_heads": 4},
            "must be fewer than the model's 2 K/V heads",
        ),
        (lambda: tiny_gpt2(vocab=VOCAB), {"kv_heads": 2}, "no separate K/V projections"),
        (lambda: tiny_gptj(vocab=VOCAB), {"kv_heads": 2}, "no separate K/V projections"),
    ],
)
def test_bad_model_or_head_count(tokenizer, text_file, model_fn, opts, message):
    with pytest.raises(UserError, match=message):
        apply(model_fn(), tokenizer, calib_file=str(text_file), **opts)


def test_bad_calibration_text(tokenizer, tmp_path):
    model = tiny_llama(4, 4, vocab=VOCAB)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        apply(model, tokenizer, kv_heads=2, calib_file=str(empty))
    short = tmp_path / "short.txt"
    short.write_text("Beautiful is better than ugly. Explicit is better than implicit.", encoding="utf-8")
    with pytest.raises(UserError, match="too short"):
        apply(model, tokenizer, kv_heads=2, calib_tokens=4096, seq_len=128, calib_file=str(short))
    with pytest.raises(UserError, match="does not exist"):
        apply(model, tokenizer, kv_heads=2, calib_file=str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text field"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="'text' field"):
        apply(model, tokenizer, kv_heads=2, calib_file=str(bad))
    with pytest.raises(UserError, match="tokenizer"):
        apply(model, None, kv_heads=2, calib_file=str(short))
    assert model.config.num_key_value_heads == 4  # nothing was changed


def test_json_and_jsonl_calibration_files(tokenizer, tmp_path):
    from tensorllm.methods.gqa.calibrate import read_text_file

    paragraphs = english_text(5000).split("\n\n")[:6]
    (tmp_path / "a.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    assert read_text_file(tmp_path / "a.txt") == ["\n\n".join(paragraphs)]
    (tmp_path / "a.json").write_text(json.dumps([{"text": p} for p in paragraphs]), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(
        "\n".join(json.dumps({"text": p}) for p in paragraphs), encoding="utf-8"
    )
    assert read_text_file(tmp_path / "a.json") == paragraphs
    assert read_text_file(tmp_path / "a.jsonl") == paragraphs
    model = tiny_llama(4, 4, vocab=VOCAB)
    apply(model, tokenizer, kv_heads=2, calib_tokens=64, seq_len=32, calib_file=str(tmp_path / "a.jsonl"))
    assert model.config.num_key_value_heads == 2


@pytest.mark.parametrize(
    "opts,message",
    [
        ({"kv_heads": 0}, "kv_heads must be at least 1"),
        ({"kv_heads": 2, "grouping": "random"}, "not one of"),
        ({"kv_heads": 2, "colour": "red"}, "unknown option"),
        ({"kv_heads": 2, "sparsity_warmup": 0.0}, "sparsity_warmup"),
        ({"kv_heads": 2, "train_precision": "fp8"}, "train_precision"),
        ({"kv_heads": 2, "train_steps": -1}, "train_steps"),
    ],
)
def test_config_validation(opts, message):
    with pytest.raises(UserError, match=message):
        registry.config_from_dict("gqa", opts)


def test_recipe_round_trip():
    from tensorllm.recipe import Recipe

    recipe = Recipe.single("gqa", seed=3, kv_heads=2, grouping="contiguous", align=False)
    again = Recipe.from_dict(__import__("yaml").safe_load(recipe.to_yaml()))
    assert again.steps[0].config == recipe.steps[0].config
