"""Matrices by the architecture's own names; LASER's names mean what they mean in LASER's code."""

from __future__ import annotations

import pytest
import torch

import tensorllm
from tensorllm.archs import spec_for
from tensorllm.base.errors import UserError
from tensorllm.methods import registry


@pytest.mark.parametrize(
    "name, path",
    [
        ("gate", "mlp.gate_proj"),
        ("up", "mlp.up_proj"),
        ("down", "mlp.down_proj"),
        ("fc_in", "mlp.gate_proj"),
        ("fc_up", "mlp.up_proj"),
        ("fc_out", "mlp.down_proj"),  # LASER's llama names
        ("ffn_in", "mlp.up_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_out", "mlp.down_proj"),  # tensorllm's old ones
        ("out_proj", "self_attn.o_proj"),
        ("q_proj", "self_attn.q_proj"),
        ("o", "self_attn.o_proj"),
        ("mlp.up_proj", "mlp.up_proj"),
    ],
)
def test_gated_ffn_names_and_aliases(tiny, name, path):
    arch = spec_for(tiny.config("llama"))
    own, resolved = arch.resolve_matrix(name)
    assert resolved == path
    assert arch.matrix_paths()[own] == path  # every alias and path lands on one own name


@pytest.mark.parametrize(
    "model_type, name, path",
    [
        ("gpt2", "fc_in", "mlp.c_fc"),
        ("gpt2", "fc_out", "mlp.c_proj"),
        ("gpt2", "ffn_in", "mlp.c_fc"),
        ("gptj", "fc_in", "mlp.fc_in"),
        ("gpt_neox", "fc_out", "mlp.dense_4h_to_h"),
        ("bert", "fc_in", "intermediate.dense"),
        ("phi3", "fc_out", "mlp.down_proj"),
        ("phi3", "ffn_in", "mlp.gate_up_proj"),
    ],
)
def test_plain_ffn_names(tiny, model_type, name, path):
    assert spec_for(tiny.config(model_type)).resolve_matrix(name)[1] == path


def test_laser_fc_in_changes_the_gate_of_a_llama_and_nothing_else(tiny):
    model = tiny.model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, report = tensorllm.compress(
        model, {"steps": [{"method": "laser", "layers": [1], "matrix": "fc_in", "rank": 2}]}, progress=False
    )
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed == ["model.layers.1.mlp.gate_proj.weight"]
    assert report.steps[0]["layers"][0]["matrix"] == "mlp.gate_proj"  # the report names the module
    assert report.steps[0]["summary"]["matrix_name"] == "gate"


def test_the_default_matrix_is_the_ffn_input_that_is_not_a_gate(tiny):
    model = tiny.model("llama")
    _, report = tensorllm.compress(
        model, {"steps": [{"method": "laser", "layers": [0], "rank": 2}]}, progress=False
    )
    assert report.steps[0]["layers"][0]["matrix"] == "mlp.up_proj"


def test_a_search_step_names_the_matrix_by_its_own_name_whatever_alias_was_given(tiny):
    model, laser = tiny.model("llama"), registry.get("laser")
    arch = spec_for(model.config)
    steps = [
        laser.concrete_step(model, arch, 0, {"matrix": m, "rho": 0.5})
        for m in ("up", "ffn_in", "mlp.up_proj")
    ]
    assert steps[0] == steps[1] == steps[2] and steps[0]["matrix"] == "up"  # one configuration, one key


def test_an_unknown_matrix_names_the_choices(tiny):
    model = tiny.model("llama")
    with pytest.raises(UserError, match="has no matrix 'nope'.*gate, up, down"):
        tensorllm.compress(
            model,
            {"steps": [{"method": "laser", "layers": [0], "matrix": "nope", "rank": 2}]},
            progress=False,
        )
