"""The real Gemma-3-270M (`gemma3-270m`: 18 layers, 4 query heads / 1 K/V head, head_dim 256, q/k norms
with (1 + w) weights, sliding-window layers, 262k vocabulary) on the CPU: `info`, a one-layer Tucker
and a LASER step that reload in plain transformers, and `expand-kv` to 4 K/V heads then `gqa` back to
1 with alignment, which reproduce the logits (issue 14, item 6: the CPU parts).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tensorllm
from tensorllm.archs import spec_for
from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.methods.gqa.convert import convert
from tensorllm.models.expand_kv import expand_kv

pytestmark = pytest.mark.real

PROMPT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def gemma3(real_unavailable):
    try:
        return tensorllm.load_model("gemma3-270m", dtype="float32", device="cpu")
    except tensorllm.UserError as exc:
        real_unavailable(f"gemma3-270m unavailable: {exc}")


@pytest.fixture(scope="module")
def ids(gemma3):
    return gemma3.tokenizer(PROMPT, return_tensors="pt")["input_ids"]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_info_describes_gemma3_270m(run_cli):
    rc, out, err = run_cli("info", "gemma3-270m", "--json")
    assert rc == 0, err
    model = json.loads(out)["model"]
    assert (
        model["architecture"],
        model["hidden"],
        model["heads"],
        model["kv_heads"],
        model["head_dim"],
        model["layers"],
    ) == ("gemma3_text", 640, 4, 1, 256, 18)


@pytest.mark.parametrize(
    "step",
    [
        {"method": "tucker", "layers": [5], "ranks": [320, 128, 5]},
        {"method": "laser", "layers": [5], "matrix": "up", "rho": 0.1},
    ],
    ids=["tucker", "laser"],
)
def test_one_step_reloads_in_plain_transformers(gemma3, ids, tmp_path, step):
    loaded = dataclasses.replace(gemma3, model=copy.deepcopy(gemma3.model))
    ref = _logits(gemma3.model, ids)
    _, report = tensorllm.compress(loaded, {"device": "cpu", "steps": [step]}, progress=False)
    assert "(1 + weight)" in report.model["qk_norms"]
    want = _logits(loaded.model, ids)
    assert _rel(want, ref) > 1e-4  # the step changed the model
    tensorllm.save_checkpoint(loaded, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(_logits(reloaded, ids), want, atol=1e-4, rtol=1e-4)


def test_expand_kv_to_4_heads_and_gqa_back_to_1_reproduce_the_logits(gemma3, ids):
    model = copy.deepcopy(gemma3.model)
    arch = spec_for(model.config)
    ref = _logits(gemma3.model, ids)
    assert expand_kv(model, arch) == 1 and model.config.num_key_value_heads == 4
    assert _rel(_logits(model, ids), ref) < 1e-5
    calib = gemma3.tokenizer(" ".join([PROMPT] * 12), return_tensors="pt")["input_ids"][:, :128]  # (1, 128)
    cfg = GQAConfig(kv_heads=1, grouping="similarity", align=True)
    result = convert(model, arch, cfg, calib, progress=False)
    assert model.config.num_key_value_heads == 1
    assert all(r["key_energy_kept"] > 1 - 1e-9 for r in result["layers"])  # four copies of one head
    assert _rel(_logits(model, ids), ref) < 1e-3
    for name, p in model.named_parameters():  # the standard checkpoint's shapes, norm weights unchanged
        q = dict(gemma3.model.named_parameters())[name]
        assert p.shape == q.shape, name
        if "q_norm" in name or "k_norm" in name:
            assert torch.equal(p, q), name


def test_fast_batch_decode_matches_batch_decode(gemma3):
    """Gemma's SentencePiece-style decoder (leading-space handling, byte fallback): eval's direct
    Rust batch decode gives transformers' texts."""
    from tensorllm.eval.tokens import decode_batch

    tok = gemma3.tokenizer
    ids = tok(["Paris is the capital of France.", "  naïve café — 東京  ", "x"], add_special_tokens=True)
    seqs = [list(s) + [5, 300, 6000] for s in ids["input_ids"]] + [[2, 106, 1, 107]]
    want = tok.batch_decode(seqs, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert decode_batch(tok, seqs) == want
