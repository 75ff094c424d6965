"""l0_schedule: the ceiling (gates forced closed by the warm-up's end) against the Lagrangian (gates free
until the export, the expected share of closed gates pulled to the target), on a tiny model."""

import pytest
import torch
from gqa_models import logits, rel_diff, tiny_llama
from torch import nn

from tensorllm.archs import spec_for
from tensorllm.base.errors import UserError
from tensorllm.methods import registry
from tensorllm.methods.gqa import convert, gates

CALIB = torch.randint(0, 256, (32, 32), generator=torch.Generator().manual_seed(0))
HELD_OUT = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
G = gates.HardConcreteGates


def _cfg(**opts):
    base = {"kv_heads": 1, "train_batch_size": 2, "train_steps": 100, "lr": 3e-3}
    return registry.config_from_dict("gqa", {**base, **opts})


def _ceiling(target: float) -> float:
    return 3.0 - (3.0 - G.FLOOR) * target  # gates.HardConcreteGates.clamp_ with init 3


@pytest.fixture(scope="module")
def lagrangian():
    model = tiny_llama(4, 4, dtype=torch.float32)
    mp = pytest.MonkeyPatch()
    mp.setattr(G, "clamp_", lambda self, target: pytest.fail("the ceiling was applied"))
    try:
        info = convert(model, spec_for(model.config), _cfg(l0_schedule="lagrangian"), CALIB, progress=False)
    finally:
        mp.undo()
    return model, info["summary"]["finetune"]


def test_under_the_lagrangian_the_gates_are_not_clamped(lagrangian):
    _, info = lagrangian
    assert info["l0_schedule"] == "lagrangian"
    above = [h for h in info["history"] if h["log_alpha_max"] > _ceiling(h["target"]) + 1.0]
    assert len(above) > len(info["history"]) // 2  # open gates far above where the ceiling would hold them


def test_under_the_ceiling_log_alpha_stays_under_it():
    model = tiny_llama(4, 4, dtype=torch.float32)
    info = convert(model, spec_for(model.config), _cfg(train_steps=30), CALIB, progress=False)
    history = info["summary"]["finetune"]["history"]
    assert all(h["log_alpha_max"] <= _ceiling(h["target"]) + 1e-6 for h in history)


def test_the_expected_sparsity_reaches_the_target(lagrangian):
    _, info = lagrangian
    last = info["history"][-1]
    assert last["target"] == 1.0 and last["closed"] == pytest.approx(1.0, abs=0.02)
    assert info["final_open_probability"] < 0.02
    mid = [h for h in info["history"] if 30 <= h["step"] <= 60]  # the multipliers catch up after the ramp
    assert any(h["closed"] < h["target"] - 0.1 for h in mid)


def test_the_export_is_plain_gqa_that_transformers_loads(lagrangian, tmp_path):
    model, _ = lagrangian
    assert model.config.num_key_value_heads == 1
    attn = model.model.layers[0].self_attn
    assert type(attn.k_proj) is nn.Linear and attn.k_proj.weight.shape == (16, 64)
    model.save_pretrained(tmp_path / "ft")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ft")
    assert again.config.num_key_value_heads == 1
    assert rel_diff(logits(again, HELD_OUT), logits(model, HELD_OUT)) < 1e-6


def test_a_checkpoint_of_one_schedule_does_not_resume_the_other(tmp_path):
    arch = spec_for(tiny_llama(4, 4).config)
    convert(tiny_llama(4, 4, dtype=torch.float32), arch, _cfg(train_steps=2, train_dir=str(tmp_path)), CALIB)
    with pytest.raises(UserError, match="different conversion"):
        cfg = _cfg(train_steps=2, train_dir=str(tmp_path), l0_schedule="lagrangian")
        convert(tiny_llama(4, 4, dtype=torch.float32), arch, cfg, CALIB, progress=False)
