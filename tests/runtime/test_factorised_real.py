"""Issue 16's acceptance on the real SmolLM2-135M: all 30 layers factorised at ranks 0.5,0.5,1.0.

The file shrinks by the reported rate of the compressed tensors; the logits equal the dense rebuild of
the same recipe within 1e-3 relative; greedy `generate` gives the same tokens; plain transformers with
trust_remote_code=True loads it in a process where tensorllm cannot be imported.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_factorised import PLAIN

import tensorllm
from tensorllm.models.aliases import alias_path

pytestmark = [pytest.mark.real, pytest.mark.slow]

RANKS = "0.5,0.5,1.0"


def greedy(model, ids, n=16):
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, ids.shape[1] :]


@pytest.fixture(scope="module")
def compressed(smollm2, tmp_path_factory):
    """One run of the recipe (30 Tucker layers take minutes on 2 CPU cores): the dense rebuild it writes
    into the model (what --format dense saves) is copied, then the kept factors replace it and are saved
    exactly as `compress --format factorised` saves them (that CLI path: tests/runtime/test_factorised.py)."""
    from tensorllm.models.io import Loaded
    from tensorllm.recipe import Recipe
    from tensorllm.runtime.factorised import factorise, save_factorised

    loaded = Loaded(copy.deepcopy(smollm2.model), smollm2.tokenizer, smollm2.arch, smollm2.path, smollm2.spec)
    rec = Recipe.single("tucker", device="cpu", layers="all", ranks=tuple(float(r) for r in RANKS.split(",")))
    kept: list = []
    _, report = tensorllm.compress(loaded, rec, factors=kept, progress=False)
    dense = copy.deepcopy(loaded.model)
    spec, summary = factorise(loaded, kept)
    report.extra.update(format="factorised", factorised=summary)
    out = tmp_path_factory.mktemp("smollm2") / "f"
    save_factorised(
        loaded, spec, out, extra_files={"recipe.yaml": rec.to_yaml(), "report.json": report.to_json()}
    )
    return out, dense


@pytest.fixture(scope="module")
def factorised_dir(compressed):
    return compressed[0]


@pytest.fixture(scope="module")
def dense_rebuild(compressed):
    return compressed[1]


def test_the_file_shrinks_by_the_reported_rate(factorised_dir):
    report = json.loads((factorised_dir / "report.json").read_text())
    s, step = report["extra"]["factorised"], report["steps"][0]
    assert s["modules"] == 30 and s["forms"] == ["blocks"]  # R3 = 8 = 2g+2: the folded cores are smaller
    before = sum(p.stat().st_size for p in alias_path("smollm2-135m").glob("*.safetensors"))
    after = sum(p.stat().st_size for p in factorised_dir.glob("*.safetensors"))
    assert abs((before - after) - (s["dense_bytes"] - s["factor_bytes"])) < 64 * 1024  # headers differ
    # the compressed tensors shrink by the rate the report gives (the folded form drops U3: 64 values)
    assert s["dense_params"] == sum(r["params_before"] for r in step["layers"])
    assert s["rate"] == pytest.approx(step["summary"]["compression_rate"], rel=1e-3) and s["rate"] > 2.2


def test_logits_and_greedy_tokens_equal_the_dense_rebuild(factorised_dir, dense_rebuild, smollm2_ids):
    loaded = tensorllm.load(factorised_dir)
    assert not any(n.endswith("self_attn.q_proj.weight") for n, _ in loaded.model.named_parameters())
    with torch.no_grad():
        got, want = loaded.model(input_ids=smollm2_ids).logits, dense_rebuild(input_ids=smollm2_ids).logits
    assert ((got - want).norm() / want.norm()).item() < 1e-3
    assert torch.equal(greedy(loaded.model, smollm2_ids), greedy(dense_rebuild, smollm2_ids))


def test_plain_transformers_loads_it_without_tensorllm(
    factorised_dir, dense_rebuild, smollm2_ids, run_python, tmp_path
):
    torch.save(smollm2_ids, tmp_path / "ids.pt")
    proc = run_python(PLAIN, factorised_dir, tmp_path / "ids.pt", tmp_path / "out.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        want = dense_rebuild(input_ids=smollm2_ids).logits
    assert ((plain["logits"] - want).norm() / want.norm()).item() < 1e-3
    n = plain["tokens"].shape[1] - smollm2_ids.shape[1]
    assert torch.equal(plain["tokens"][0, smollm2_ids.shape[1] :], greedy(dense_rebuild, smollm2_ids, n))
