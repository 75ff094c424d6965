"""Tests for tensorllm.tensor.svd: exact and seeded randomised truncated SVD, LASER's rank rule."""

import pytest
import torch

from tensorllm.tensor.svd import laser_rank, truncated_svd


def _matrix(m=60, n=40, seed=0, dtype=torch.float64, decay=0.8):
    """A matrix with singular values decaying geometrically (a clear gap at every rank)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q  # (m, k)
    v = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q  # (n, k)
    s = decay ** torch.arange(k, dtype=torch.float64)  # (k,)
    return ((u * s) @ v.T).to(dtype)  # (m, n)


def _reference(w, rank):
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


@pytest.mark.parametrize("shape", [(60, 40), (40, 60)])
@pytest.mark.parametrize("rank", [1, 7, 40])
def test_exact_equals_torch_reference(shape, rank):
    w = _matrix(*shape)
    got = truncated_svd(w, rank, compute_dtype=torch.float64)
    assert got.shape == w.shape and got.dtype == w.dtype
    torch.testing.assert_close(got, _reference(w, rank), rtol=0, atol=1e-12)


def test_exact_keeps_input_dtype_and_best_error():
    w = _matrix(dtype=torch.bfloat16)
    got = truncated_svd(w, 5)
    assert got.dtype == torch.bfloat16
    # Eckart-Young: the error is the norm of the dropped singular values.
    s = torch.linalg.svdvals(w.double())
    err = torch.linalg.matrix_norm(w.double() - got.double())
    assert abs(err - s[5:].norm()) < 2e-2 * s[0]  # bf16 output rounding


def test_full_rank_reproduces_the_matrix():
    w = _matrix()
    torch.testing.assert_close(truncated_svd(w, 40, compute_dtype=torch.float64), w)


def test_randomized_is_deterministic_given_seed():
    w = _matrix(decay=0.95)
    a = truncated_svd(w, 6, method="randomized", seed=123, n_iter=0, n_oversamples=2)
    b = truncated_svd(w, 6, method="randomized", seed=123, n_iter=0, n_oversamples=2)
    c = truncated_svd(w, 6, method="randomized", seed=124, n_iter=0, n_oversamples=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed matters when the range finder is not exact


def test_randomized_is_accurate_with_power_iterations():
    w = _matrix(decay=0.7)
    got = truncated_svd(w, 8, method="randomized", seed=0, compute_dtype=torch.float64)
    ref = _reference(w, 8)
    assert (got - ref).norm() / ref.norm() < 1e-6


def test_randomized_requires_a_seed():
    with pytest.raises(ValueError, match="seed"):
        truncated_svd(_matrix(), 5, method="randomized")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rank": 0}, "between 1 and 40"),
        ({"rank": 41}, "between 1 and 40"),
        ({"rank": 2.5}, "rank 2.5"),
        ({"rank": 3, "method": "lanczos"}, "method"),
        ({"rank": 3, "compute_dtype": torch.float16}, "compute_dtype"),
        ({"rank": 3, "method": "randomized", "seed": 0, "n_iter": -1}, "n_iter"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        truncated_svd(_matrix(), **kwargs)


def test_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        truncated_svd(torch.zeros(2, 3, 4), 1)


@pytest.mark.parametrize(
    "shape,rho,expected",
    [
        ((4096, 11008), 0.01, 40),
        ((11008, 4096), 0.1, 409),
        ((4096, 4096), 0.9, 3686),
        ((100, 300), 0.29, 28),  # floating-point product 28.999..., floored like the reference
        ((10, 10), 0.01, 1),  # never below 1
        ((64, 32), 1.0, 32),
        (torch.Size([768, 3072]), 0.05, 38),
    ],
)
def test_laser_rank(shape, rho, expected):
    assert laser_rank(shape, rho) == expected


@pytest.mark.parametrize("shape,rho", [((10, 10), 0.0), ((10, 10), 1.5), ((10,), 0.5)])
def test_laser_rank_rejects_bad_input(shape, rho):
    with pytest.raises(ValueError):
        laser_rank(shape, rho)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_randomized_same_seed_agrees_across_devices():
    w = _matrix(decay=0.9)
    cpu = truncated_svd(w, 6, method="randomized", seed=7, compute_dtype=torch.float64)
    gpu = truncated_svd(w.cuda(), 6, method="randomized", seed=7, compute_dtype=torch.float64)
    torch.testing.assert_close(cpu, gpu.cpu(), rtol=0, atol=1e-10)
