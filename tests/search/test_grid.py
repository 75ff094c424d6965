"""The grid: settings parsing, resolved canonical steps, stable keys, duplicate settings merged."""

import pytest

from tensorllm.base.errors import UserError
from tensorllm.methods.tucker import parse_rank_settings
from tensorllm.search.grid import BASELINE, Config, config_key, hybrid_grid, method_grid


def tucker_grid(model, arch, layers, **options):
    return method_grid(model, arch, "tucker", layers, options)


def laser_grid(model, arch, layers, **options):
    return method_grid(model, arch, "laser", layers, options)


def test_parse_rank_settings():
    assert parse_rank_settings("144,48,4; 0.5,0.5,1 ;auto") == [(144, 48, 4), (0.5, 0.5, 1.0), "auto"]
    with pytest.raises(UserError):
        parse_rank_settings("144,x,4")


def test_key_is_stable_and_ignores_dict_order():
    a = [{"method": "laser", "layers": [1], "matrix": "ffn_in", "rank": 3}]
    b = [{"rank": 3, "matrix": "ffn_in", "layers": [1], "method": "laser"}]
    assert config_key(a) == config_key(b) == Config(tuple(a)).key
    assert config_key([]) == BASELINE.key != config_key(a)


def test_tucker_grid_resolves_ranks_and_merges_equal_settings(tiny_loaded):
    # tiny model: tensor (D=32, d=8, 2g+2=6, Hkv=2); 0.5,0.5,1 -> (16,4,6), the same as the explicit 16,4,6
    grid = tucker_grid(
        tiny_loaded.model, tiny_loaded.arch, "0,2", ranks=[(16, 4, 6), (0.5, 0.5, 1.0), "auto"], rates=[4.0]
    )
    assert grid.rows == ["L0", "L2"] and grid.cols == ["16,4,6", "0.5,0.5,1", "auto", "rate 4"]
    assert grid.cells[("L0", "16,4,6")].key == grid.cells[("L0", "0.5,0.5,1")].key
    step = grid.cells[("L2", "auto")].steps[0]
    assert step["method"] == "tucker" and step["layers"] == [2] and step["rate"] is None
    assert all(isinstance(r, int) for r in step["ranks"])
    assert len(grid.configs()) < len(grid.cells)  # merged duplicates are evaluated once
    assert grid.row_layer == {"L0": 0, "L2": 2}


def test_tucker_rank_too_large_names_the_layer(tiny_loaded):
    with pytest.raises(UserError, match="layer 1: rank 99"):
        tucker_grid(tiny_loaded.model, tiny_loaded.arch, "1", ranks=[(8, 99, 2)])


def test_laser_grid_uses_integer_ranks(tiny_loaded):
    grid = laser_grid(tiny_loaded.model, tiny_loaded.arch, "all", rhos=[0.5, 0.1], matrices=("up", "down"))
    assert len(grid.rows) == 3 and grid.cols == ["up 0.5", "up 0.1", "down 0.5", "down 0.1"]
    step = grid.cells[("L1", "up 0.5")].steps[0]
    assert step["rank"] == 16 and step["rho"] is None  # up is (48, 32): floor(32 * 0.5)
    assert step["matrix"] == "up"
    with pytest.raises(UserError, match="no matrix"):
        laser_grid(tiny_loaded.model, tiny_loaded.arch, "0", rhos=[0.5], matrices=("nope",))


def test_hybrid_grid_combines_every_pair():
    a = [
        ("A1", Config(({"method": "tucker", "layers": [0]},))),
        ("A2", Config(({"method": "tucker", "layers": [1]},))),
    ]
    b = [("B1", Config(({"method": "laser", "layers": [2]},)))]
    grid = hybrid_grid([a, b])
    assert grid.rows == ["A1", "A2"] and grid.cols == ["B1"]
    assert [s["method"] for s in grid.cells[("A2", "B1")].steps] == ["tucker", "laser"]
    with pytest.raises(UserError):
        hybrid_grid([a])


@pytest.mark.parametrize(
    "layers,shown", [([9], "L9"), ([0, 3], "L0,3"), ("0,3", "L0,3"), ("all", "Lall"), (7, "L7")]
)
def test_describe_step_shows_layers_as_written(layers, shown):
    from tensorllm.search.grid import describe_step

    step = {"method": "tucker", "layers": layers, "ranks": [8, 4, 2]}
    assert describe_step(step) == f"tucker {shown} (8,4,2)"
