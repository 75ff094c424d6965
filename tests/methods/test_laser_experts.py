"""LASER on mixture-of-experts FFNs (tiny Mixtral and Qwen3-MoE, 4 experts, fused expert parameters):
`experts.up` (and its aliases) rank-reduces that matrix of every expert, `expert: N` of one; the
router and every other parameter stay bit-identical; the search restores it; the result reloads."""

from __future__ import annotations

import pytest
import torch

import tensorllm
from tensorllm.archs import spec_for
from tensorllm.methods import registry
from tensorllm.search.apply import Applier, touched_params
from tensorllm.search.grid import Config

MOE = ["mixtral", "qwen3_moe"]


def _laser(model, **step):
    recipe = {"device": "cpu", "steps": [{"method": "laser", **step}]}
    return tensorllm.compress(model, recipe, progress=False)[1]


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _blocks(model, layer: int):
    """Expert parameters of `layer` as per-expert (gate, up, down) blocks: each (E, out, in)."""
    experts = model.model.layers[layer].mlp.experts
    gate, up = experts.gate_up_proj.detach().clone().chunk(2, dim=1)  # [gate; up] rows of every expert
    return {"gate": gate, "up": up, "down": experts.down_proj.detach().clone()}


@pytest.mark.parametrize("family", MOE)
@pytest.mark.parametrize(
    "matrix, part",
    [
        ("experts.up", "up"),
        ("up", "up"),
        ("ffn_in", "up"),
        ("fc_in", "gate"),
        ("experts.down", "down"),
        (None, "up"),
    ],
)
def test_every_experts_matrix_is_reduced_and_nothing_else_moves(tiny, family, matrix, part):
    model = tiny.model(family)
    before, blocks_before = _state(model), _blocks(model, 1)
    report = _laser(model, layers=[1], rank=2, **({"matrix": matrix} if matrix else {}))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    param = "down_proj" if part == "down" else "gate_up_proj"
    assert changed == {f"model.layers.1.mlp.experts.{param}"}  # the router (mlp.gate) among the unchanged
    blocks = _blocks(model, 1)
    for name in ("gate", "up", "down"):
        if name != part:
            assert torch.equal(blocks[name], blocks_before[name]), name
    for e in range(4):
        s = torch.linalg.svdvals(blocks[part][e].double())
        assert s[2] < 1e-5 * s[0]  # rank 2 (to float32 round-off)
        assert not torch.equal(blocks[part][e], blocks_before[part][e])
    rec = report.steps[0]["layers"][0]
    assert rec["matrix"] == f"mlp.experts.{param}[{part}]" and rec["rank"] == 2
    assert rec["experts"] == [0, 1, 2, 3]
    assert 0 < rec["rel_error"] < 1 and report.steps[0]["summary"]["matrix_name"] == f"experts.{part}"


@pytest.mark.parametrize("family", MOE)
def test_one_expert_only(tiny, family):
    model = tiny.model(family)
    before = _blocks(model, 0)
    report = _laser(model, layers=[0], matrix="experts.up", expert=2, rho=0.1)
    after = _blocks(model, 0)
    for e in range(4):
        assert torch.equal(after["up"][e], before["up"][e]) == (e != 2)
        assert torch.equal(after["gate"][e], before["gate"][e])
    assert report.steps[0]["layers"][0]["experts"] == [2]


@pytest.mark.parametrize("family", MOE)
@pytest.mark.parametrize(
    "step, message",
    [
        ({"matrix": "mlp.gate"}, "router: LASER never changes it"),
        ({"matrix": "mlp.gate.weight"}, "router"),
        ({"matrix": "experts.up", "expert": 4}, "expert 4 does not exist"),
        ({"matrix": "q", "expert": 0}, "applies to the experts' matrices"),
    ],
)
def test_bad_requests_are_refused_in_one_line_and_change_nothing(tiny, family, step, message):
    model = tiny.model(family)
    before = _state(model)
    with pytest.raises(tensorllm.UserError, match=message) as exc:
        _laser(model, layers=[0], rank=2, **step)
    assert "\n" not in str(exc.value)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_dense_layer_of_a_sparse_model_names_its_matrices_by_path(tiny):
    model = tiny.model("qwen3_moe", mlp_only_layers=[0])  # layer 0 has a dense FFN
    with pytest.raises(tensorllm.UserError, match="layer 0 .* dense FFN"):
        _laser(model, layers=[0], matrix="experts.up", rank=2)
    report = _laser(model, layers=[0], matrix="mlp.up_proj", rank=2)
    assert report.steps[0]["layers"][0]["matrix"] == "mlp.up_proj"


@pytest.mark.parametrize("family", MOE)
def test_the_search_applies_and_restores_an_experts_step_bit_exactly(tiny, family):
    model = tiny.model(family)
    arch = spec_for(model.config)
    step = registry.get("laser").concrete_step(model, arch, 1, {"matrix": "up", "rho": 0.25})
    up_rows = {"mixtral": 128, "qwen3_moe": 32}[family]  # each expert's up matrix is (up_rows, 64)
    assert step["matrix"] == "experts.up" and step["rank"] == int(min(up_rows, 64) * 0.25)
    touched = set(touched_params(model, arch, step))
    assert touched == {"model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"}
    before = _state(model)
    with Applier(model, arch).applied(Config((step,))):
        assert not torch.equal(model.model.layers[1].mlp.experts.gate_up_proj, before[sorted(touched)[1]])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("family", MOE)
def test_tucker_and_laser_on_a_moe_model_reload_in_plain_transformers(tiny, family, tmp_path):
    model = tiny.model(family)
    ids = tiny.inputs()
    tensorllm.compress(
        model,
        {
            "device": "cpu",
            "steps": [
                {"method": "tucker", "layers": [0], "ranks": [16, 8, 2], "n_iter_max": 3},
                {"method": "laser", "layers": [1], "matrix": "experts.down", "rank": 4},
            ],
        },
        progress=False,
    )
    logits = tiny.logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = tiny.auto_class(family).from_pretrained(tmp_path).eval()
    assert torch.equal(tiny.logits(reloaded, ids), logits)
