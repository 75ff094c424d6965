"""The method extension point: a method is one module (config + transform + hooks) registered by name,
and the search, the report and the CLI learn everything about it from the registry alone."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tensorllm.archs import blocks, get_module, spec_for
from tensorllm.base.errors import UserError
from tensorllm.base.layers import one_layer_as_list, parse_layers
from tensorllm.methods import registry
from tensorllm.methods.registry import Column, Flag, Method, layers_label, parse_floats


@dataclass
class ScaleConfig:
    layers: int | str | tuple[int, ...] | None = None
    factor: float = 1.0

    def __post_init__(self) -> None:
        self.layers = one_layer_as_list(self.layers)


class Scale(Method):
    """A toy method: multiply the output projection of the selected layers by `factor`."""

    name, config_cls, searchable = "scale_o", ScaleConfig, True
    compress_flags = (Flag("factor", "scale_o: the factor.", type=float),)
    search_flags = (
        Flag("factors", "scale_o: factors, one column each.", parse=lambda s: parse_floats(s, "--factors")),
    )

    def apply(self, model, arch, cfg, ctx) -> dict:
        for i in parse_layers(cfg.layers, len(blocks(model, arch))):
            with torch.no_grad():
                get_module(blocks(model, arch)[i], arch.o).weight.mul_(cfg.factor)
        return {"layers": [], "summary": {}}

    def touched_modules(self, arch, step):
        return [arch.o]

    def columns(self, arch, options):
        return "factor", [Column(f"x{f:g}", {"factor": f}) for f in options.get("factors") or (2.0,)]

    def describe(self, step):
        return f"scale_o L{layers_label(step)} x{step['factor']:g}"


@pytest.fixture
def scale(monkeypatch):
    method = Scale()
    monkeypatch.setitem(registry._METHODS, method.name, method)
    return method


def test_a_registered_method_reaches_the_search_and_the_cli(scale, tiny):
    from tensorllm.cli.common import merged_flags, method_options
    from tensorllm.search.apply import Applier
    from tensorllm.search.grid import method_grid
    from tensorllm.search.runner import search_methods

    assert "scale_o" in search_methods()
    assert {"factor"} <= {f.name for f in merged_flags("compress_flags")}
    assert method_options("scale_o", "search_flags", {"factors": "0.5,3"}) == {"factors": [0.5, 3.0]}
    model = tiny.model("llama")
    grid = method_grid(model, spec_for(model.config), "scale_o", "0,1", {"factors": [0.5, 3.0]})
    assert grid.cols == ["x0.5", "x3"] and grid.rows == ["L0", "L1"]
    cfg = grid.cells[("L1", "x3")]
    assert cfg.describe() == "scale_o L1 x3"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    applier = Applier(model, spec_for(model.config))
    with applier.applied(cfg):
        o = model.model.layers[1].self_attn.o_proj.weight
        assert torch.allclose(o, 3 * before["model.layers.1.self_attn.o_proj.weight"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored exactly


def test_a_flag_of_another_method_is_refused(scale):
    from tensorllm.cli.common import method_options

    with pytest.raises(UserError, match="--ranks is not an option of method 'scale_o'"):
        method_options("scale_o", "compress_flags", {"ranks": "1,2,3"})


def test_methods_that_change_shapes_are_not_searchable():
    assert not registry.get("gqa").searchable
    with pytest.raises(UserError, match="cannot apply 'gqa'"):
        registry.get("gqa").touched_modules(None, {})
    assert {m.name for m in registry.searchable()} == {"tucker", "laser"}


def test_registering_a_name_twice_is_a_developer_error():
    with pytest.raises(ValueError):
        registry.register(registry.get("tucker"))


def test_options_added_later_leave_the_store_keys_of_older_steps_unchanged():
    """A store keys each configuration by its canonical steps; options a method gained later (tucker's and
    laser's budget / calibrate / calib_file, laser's expert) are left out at their default, so results
    stored before they existed are found again. The keys are those the code gave before (edd8094)."""
    from tensorllm.search.grid import config_key

    t = registry.canonical_step("tucker", {"layers": [5], "ranks": [40, 1, 8]})
    la = registry.canonical_step("laser", {"layers": [27], "matrix": "down", "rank": 8})
    assert (config_key([t]), config_key([la]), config_key([t, la])) == (
        "dac3862d11002e20",
        "415350af81321da4",
        "bec4feeceedfea7d",
    )
    calibrated = registry.canonical_step("tucker", {"layers": [5], "ranks": [40, 1, 8], "calibrate": 512})
    assert calibrated["calibrate"] == 512 and config_key([calibrated]) != config_key([t])
    expert = registry.canonical_step("laser", {"layers": [27], "matrix": "down", "rank": 8, "expert": 0})
    assert expert["expert"] == 0  # a set value is kept, even when it is falsy
    options = {k: v for k, v in t.items() if k != "method"}
    assert registry.config_from_dict("tucker", options).calibrate is None
