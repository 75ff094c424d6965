"""Data-aware Tucker and LASER (methods/whiten.py): the whitener is C's square root, the whitened fit has
a lower output error on the calibration inputs than the data-free one at the same ranks, its factors
run in the factorised runtime, and bad options are one line.
"""

from __future__ import annotations

import copy

import pytest
import torch

import tensorllm
from tensorllm.archs import spec_for
from tensorllm.attention import read_attention
from tensorllm.methods.whiten import input_moments, whitened_svd_factors, whitener
from tensorllm.models.io import Loaded
from tensorllm.tensor.svd import truncated_svd


def anisotropic(n=400, d=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, d, dtype=torch.float64)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * scales  # (n, d) rows: inputs


def test_whitener_is_the_square_root():
    x = anisotropic()
    c = x.T @ x / len(x)
    s, s_inv = whitener(c)
    assert torch.allclose(s.T @ s, c, rtol=1e-6, atol=1e-12)
    assert torch.allclose(s @ s_inv, torch.eye(len(c), dtype=torch.float64), atol=1e-8)


def test_whitened_svd_has_the_lowest_output_error():
    x = anisotropic()
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 24, generator=gen, dtype=torch.float64)  # (out, in)
    s, s_inv = whitener(x.T @ x / len(x))
    left, right = whitened_svd_factors(w, 4, s, s_inv)
    plain = truncated_svd(w, 4, compute_dtype=torch.float64)
    out_err = lambda approx: (x @ (w - approx).T).norm().item()  # noqa: E731
    assert out_err(left @ right) < 0.8 * out_err(plain)


@pytest.fixture
def calibrated(tiny, tmp_path):
    """(original, data-free, data-aware) tiny Llamas compressed at the same ranks, the calibration file."""
    gen = torch.Generator().manual_seed(3)
    words = torch.randint(3, 40, (600,), generator=gen)  # a skewed vocabulary: anisotropic inputs
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"w{int(i)}" for i in words))
    base = tiny.model("llama")
    out = []
    for extra in ({}, {"calibrate": 512, "calib_file": str(text)}):
        model = copy.deepcopy(base)
        loaded = Loaded(model, tiny.tokenizer(), spec_for(model.config), None, "tiny")
        step = {"method": "tucker", "layers": "all", "ranks": [8, 8, 3], **extra}
        tensorllm.compress(loaded, {"device": "cpu", "steps": [step]}, progress=False)
        out.append(model)
    return base, out[0], out[1], text


def whitened_error(base, model, c, layer=0) -> float:
    """The objective data-aware Tucker minimises: sum over blocks of ||S (W - W')||^2, S^T S = C."""
    arch = spec_for(base.config)
    a, b = read_attention(base, arch, layer), read_attention(model, arch, layer)
    s, _ = whitener(c)
    err = sum((s @ (getattr(a, n) - getattr(b, n)).double().T).pow(2).sum() for n in "qkv")
    return float(err + (s @ (a.o - b.o).double()).pow(2).sum())


def test_calibrated_tucker_fits_the_outputs_better(calibrated, tiny):
    from tensorllm.methods.whiten import calibration_tokens

    base, free, aware, text = calibrated
    tokens = calibration_tokens(tiny.tokenizer(), 512, str(text))
    mods = {i: base.model.layers[i].self_attn.q_proj for i in range(2)}
    moments = input_moments(base, mods, tokens, device=torch.device("cpu"), progress=False)
    for i in range(2):
        assert whitened_error(base, aware, moments[i], i) < 0.9 * whitened_error(base, free, moments[i], i)


def test_calibrated_factors_run_in_the_factorised_runtime(tiny, tmp_path):
    from tensorllm.runtime.factorised import factorise

    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"w{3 + (i * 7) % 50}" for i in range(400)))
    model = tiny.model("llama")
    loaded = Loaded(model, tiny.tokenizer(), spec_for(model.config), None, "tiny")
    steps = [
        {"method": "tucker", "layers": "all", "ranks": [8, 8, 3], "calibrate": 256, "calib_file": str(text)},
        {
            "method": "laser",
            "layers": [1],
            "matrix": "down",
            "rank": 6,
            "calibrate": 256,
            "calib_file": str(text),
        },
    ]
    kept: list = []
    tensorllm.compress(loaded, {"device": "cpu", "steps": steps}, factors=kept, progress=False)
    ids = tiny.inputs()
    want = tiny.logits(model, ids)
    factorise(loaded, kept)
    assert ((tiny.logits(model, ids) - want).norm() / want.norm()).item() < 1e-5


def test_calibrated_laser_fits_the_outputs_better(tiny, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"w{3 + (i * i) % 30}" for i in range(600)))
    base = tiny.model("llama")
    errs = []
    for extra in ({}, {"calibrate": 512, "calib_file": str(text)}):
        model = copy.deepcopy(base)
        loaded = Loaded(model, tiny.tokenizer(), spec_for(model.config), None, "tiny")
        step = {"method": "laser", "layers": [0], "matrix": "up", "rank": 4, **extra}
        tensorllm.compress(loaded, {"device": "cpu", "steps": [step]}, progress=False)
        errs.append(model.model.layers[0].mlp.up_proj.weight.detach())
    from tensorllm.methods.whiten import calibration_tokens

    tokens = calibration_tokens(tiny.tokenizer(), 512, str(text))
    c = input_moments(
        base, {0: base.model.layers[0].mlp.up_proj}, tokens, device=torch.device("cpu"), progress=False
    )[0]
    s, _ = whitener(c)
    w = base.model.layers[0].mlp.up_proj.weight.detach().double()
    out_err = [((w - e.double()) @ s).norm().item() for e in errs]
    assert out_err[1] < 0.9 * out_err[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--calibrate", "0"], "calibrate is a number of calibration tokens >= 1"),
        (["--method", "laser", "--rank", "4", "--calibrate", "-5"], "laser calibrate is a number"),
    ],
)
def test_bad_calibration_options_are_one_line(tiny_ckpt, tmp_path, run_cli, flags, message):
    base = [] if "--method" in flags else ["--ranks", "8,8,3"]
    rc, _, err = run_cli("compress", tiny_ckpt, "--layers", "0", *base, *flags, "--out", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_calib_file_needs_calibrate_and_a_tokenizer(tiny):
    with pytest.raises(tensorllm.UserError, match="calib_file needs calibrate"):
        tensorllm.Recipe.single("tucker", layers=[0], ranks=(8, 8, 3), calib_file="x.txt")
    with pytest.raises(tensorllm.UserError, match="needs the model's tokenizer"):
        step = {"method": "tucker", "layers": [0], "ranks": [8, 8, 3], "calibrate": 64}
        tensorllm.compress(tiny.model("llama"), {"device": "cpu", "steps": [step]}, progress=False)
