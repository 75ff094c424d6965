"""Whole-model budgets (methods/budget.py): the allocation keeps at most the fraction asked, gives the
low-rank layer lower ranks than the noisy one, beats one rank for all layers on the weights' error, and
bad budgets are one line, exit 2.
"""

from __future__ import annotations

import math

import pytest
import torch

import tensorllm
from tensorllm.archs import blocks, spec_for
from tensorllm.attention import read_attention, write_attention
from tensorllm.methods.budget import allocate, matrix_curve, tucker_curve

STEP = {"method": "tucker", "layers": "all"}


def planted_model(tiny, rank=2, seed=0):
    """A tiny Llama whose layer 0 attention is rank `rank` in d_model (+ small noise), layer 1 random."""
    model = tiny.model("llama", seed=seed)
    arch = spec_for(model.config)
    w = read_attention(model, arch, 0)
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(w.hidden, rank, generator=gen)).Q  # (D, r)
    low = w.with_(q=w.q @ U @ U.T, k=w.k @ U @ U.T, v=w.v @ U @ U.T, o=U @ U.T @ w.o)
    write_attention(model, arch, 0, low)
    return model


def test_allocate_respects_the_budget_and_prefers_the_fast_decaying_unit():
    fast = torch.tensor([10.0, 0.01, 0.001, 0.0001]) ** 2
    flat = torch.tensor([1.0, 1.0, 1.0, 1.0])
    curves = [matrix_curve(torch.diag(fast.sqrt())), matrix_curve(torch.diag(flat))]
    for budget in (16.0, 24.0, 40.0):
        ranks = allocate(curves, budget)
        assert sum(r[0] * 8 for r in ranks) <= budget
    assert allocate(curves, 24.0) == [(1,), (2,)]  # the flat spectrum gets the parameters


def test_tucker_curve_counts_the_papers_parameters():
    t = torch.randn(12, 4, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params, err, ranks = tucker_curve(t, (0, 1, 2))
    i = int(((ranks == torch.tensor([3, 2, 6])).all(1)).nonzero()[0])
    assert params[i] == 12 * 3 + 4 * 2 + 6 * 6 + 3 * 2 * 6 * 2
    full = int(((ranks == torch.tensor([12, 4, 6])).all(1)).nonzero()[0])
    assert err[full] == pytest.approx(0.0, abs=1e-9) and err.max() <= 3 * t.pow(2).sum()


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_tucker_budget_allocates_per_layer(tiny, fraction):
    model = planted_model(tiny)
    _, report = tensorllm.compress(
        model, {"device": "cpu", "steps": [{**STEP, "budget": fraction}]}, progress=False
    )
    step = report.steps[0]
    before = sum(r["params_before"] for r in step["layers"])
    after = sum(r["params_after"] for r in step["layers"])
    assert after <= fraction * before and step["summary"]["kept_fraction"] == pytest.approx(after / before)
    assert after >= 0.7 * fraction * before  # the budget is used, not wasted
    r0, r1 = (r["ranks"] for r in step["layers"])
    assert r0[0] < r1[0]  # the planted low-rank layer needs fewer d_model directions


def sq_error(model0, model1, arch) -> float:
    total = 0.0
    for i in range(len(blocks(model0, arch))):
        a, b = read_attention(model0, arch, i), read_attention(model1, arch, i)
        total += sum((getattr(a, n) - getattr(b, n)).double().pow(2).sum().item() for n in "qkvo")
    return total


def test_a_budget_beats_one_rank_for_all_layers_at_equal_size(tiny):
    import copy

    base = planted_model(tiny)
    arch = spec_for(base.config)
    uniform = copy.deepcopy(base)
    _, rep_u = tensorllm.compress(
        uniform, {"device": "cpu", "steps": [{**STEP, "ranks": [32, 8, 6]}]}, progress=False
    )
    kept = sum(r["params_after"] for r in rep_u.steps[0]["layers"])
    dense = sum(r["params_before"] for r in rep_u.steps[0]["layers"])
    budgeted = copy.deepcopy(base)
    _, rep_b = tensorllm.compress(
        budgeted, {"device": "cpu", "steps": [{**STEP, "budget": kept / dense}]}, progress=False
    )
    assert sum(r["params_after"] for r in rep_b.steps[0]["layers"]) <= kept
    assert sq_error(base, budgeted, arch) < sq_error(base, uniform, arch)


def test_laser_budget_allocates_per_layer(tiny):
    model = tiny.model("llama")
    with torch.no_grad():  # layer 0's up matrix becomes rank 3: it needs no more
        up = model.model.layers[0].mlp.up_proj.weight
        u, s, vh = torch.linalg.svd(up, full_matrices=False)
        up.copy_((u[:, :3] * s[:3]) @ vh[:3])
    steps = [{"method": "laser", "layers": "all", "matrix": "up", "budget": 0.3}]
    _, report = tensorllm.compress(model, {"device": "cpu", "steps": steps}, progress=False)
    recs = report.steps[0]["layers"]
    assert sum(r["params_after"] for r in recs) <= 0.3 * sum(r["params_before"] for r in recs)
    assert recs[0]["rank"] <= 3 < recs[1]["rank"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--budget", "0"], "budget must lie in (0, 1]"),
        (["--budget", "1.5"], "budget must lie in (0, 1]"),
        (["--budget", "nan"], "budget must lie in (0, 1]"),
        (["--budget", "0.5", "--ranks", "4,4,2"], "one of 'ranks', 'rate' and 'budget'"),
        (["--method", "laser", "--budget", "-1"], "laser budget must lie in (0, 1]"),
        (["--budget", "0.5", "--stream"], "cannot stream layer by layer"),
    ],
)
def test_bad_budgets_are_one_line(tiny_ckpt, tmp_path, run_cli, flags, message):
    rc, _, err = run_cli(
        "compress", tiny_ckpt, "--layers", "all", *flags, "--out", tmp_path / "o", "--device", "cpu"
    )
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_a_budget_too_small_for_ranks_one_is_refused(tiny):
    model = tiny.model("llama")
    with pytest.raises(tensorllm.UserError, match="fewer than the smallest ranks need"):
        tensorllm.compress(model, {"device": "cpu", "steps": [{**STEP, "budget": 1e-6}]}, progress=False)


def test_a_budget_keeps_factors(tiny):
    from tensorllm.models.io import Loaded
    from tensorllm.runtime.factorised import factorise

    model = planted_model(tiny)
    loaded = Loaded(model, None, spec_for(model.config), None, "tiny")
    kept: list = []
    _, report = tensorllm.compress(
        loaded, {"device": "cpu", "steps": [{**STEP, "budget": 0.3}]}, factors=kept, progress=False
    )
    ids = tiny.inputs()
    want = tiny.logits(model, ids)
    _, summary = factorise(loaded, kept)
    assert ((tiny.logits(model, ids) - want).norm() / want.norm()).item() < 1e-5
    assert math.isclose(
        summary["factor_params"], sum(r["params_after"] for r in report.steps[0]["layers"]), rel_tol=0.01
    )
