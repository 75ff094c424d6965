"""Apply/restore: only touched parameters are snapshotted, restoration is bit-exact, and a step
(same layer, same ranks) is decomposed once per process."""

import pytest
import torch

import tensorllm.methods.tucker as tucker_mod
from tensorllm.methods import registry
from tensorllm.search.apply import Applier, touched_params
from tensorllm.search.grid import Config


def tucker_step(model, arch, layer, options):
    return registry.get("tucker").concrete_step(model, arch, layer, options)


def laser_step(model, arch, layer, matrix, rho):
    return registry.get("laser").concrete_step(model, arch, layer, {"matrix": matrix, "rho": rho})


FAST = {"n_iter_max": 3}  # a few HOOI iterations: what is tested here does not depend on convergence


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _configs(tiny_loaded):
    m, a = tiny_loaded.model, tiny_loaded.arch
    t = tucker_step(m, a, 1, {"ranks": (8, 4, 2), **FAST})
    lz = laser_step(m, a, 2, "up", 0.25)
    return {"tucker": Config((t,)), "laser": Config((lz,)), "hybrid": Config((t, lz))}


@pytest.mark.parametrize("which", ["tucker", "laser", "hybrid"])
def test_restore_is_bit_exact_and_only_touched_params_change(tiny_loaded, which):
    cfg = _configs(tiny_loaded)[which]
    before = _state(tiny_loaded.model)
    applier = Applier(tiny_loaded.model, tiny_loaded.arch)
    touched = {n for s in cfg.steps for n in touched_params(tiny_loaded.model, tiny_loaded.arch, s)}
    with applier.applied(cfg):
        during = _state(tiny_loaded.model)
    changed = {n for n in before if not torch.equal(before[n], during[n])}
    assert changed and changed <= touched
    after = _state(tiny_loaded.model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(after[n].dtype == before[n].dtype for n in before)


def test_restore_after_an_error_inside_the_block(tiny_loaded):
    before = _state(tiny_loaded.model)
    with pytest.raises(RuntimeError, match="boom"):
        with Applier(tiny_loaded.model, tiny_loaded.arch).applied(_configs(tiny_loaded)["tucker"]):
            raise RuntimeError("boom")
    assert all(torch.equal(before[n], p) for n, p in tiny_loaded.model.named_parameters())


def test_same_step_is_decomposed_once_and_the_cache_is_exact(tiny_loaded, monkeypatch):
    calls = []
    real = tucker_mod.compress_layer
    monkeypatch.setattr(tucker_mod, "compress_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfgs = _configs(tiny_loaded)
    applier = Applier(tiny_loaded.model, tiny_loaded.arch)
    with applier.applied(cfgs["tucker"]):
        first = _state(tiny_loaded.model)
    with applier.applied(cfgs["hybrid"]) as reports:  # reuses the tucker step
        assert reports[0]["cached"] and not reports[1]["cached"]
    with applier.applied(cfgs["tucker"]):
        again = _state(tiny_loaded.model)
    assert len(calls) == 1
    assert all(torch.equal(first[n], again[n]) for n in first)


def test_step_after_a_step_on_the_same_params_is_not_cached(tiny_loaded):
    m, a = tiny_loaded.model, tiny_loaded.arch
    t1 = tucker_step(m, a, 0, {"ranks": (8, 4, 2), **FAST})
    t2 = tucker_step(m, a, 0, {"ranks": (16, 4, 6), **FAST})
    applier = Applier(m, a)
    with applier.applied(Config((t1, t2))) as reports:
        assert not reports[1]["cached"]
    with applier.applied(Config((t2,))) as reports:  # t2 on original weights is a different result
        assert not reports[0]["cached"]
