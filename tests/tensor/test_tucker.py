"""Tests for tensorllm.tensor.tucker: layout, mode products, HOSVD/HOOI, TensorLy parity."""

import itertools

import pytest
import torch

from tensorllm.tensor.multilinear import fold, mode_dot, multi_mode_dot, unfold
from tensorllm.tensor.tucker import TuckerResult, hooi, hosvd, reconstruct, relative_error

SHAPE = (24, 10, 4, 5)  # (hidden, head_dim, 4 matrices, heads), a miniature of 4096 x 128 x 4 x 32
MODES = (0, 1, 2)
RANKS = (6, 4, 3)


def _rand(shape=SHAPE, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype)


def _orthonormal(rows, cols, seed):
    return torch.linalg.qr(_rand((rows, cols), seed=seed)).Q  # (rows, cols)


def _low_rank(shape=SHAPE, modes=MODES, ranks=RANKS, noise=0.0, seed=0):
    """core ×_modes orthonormal factors (+ noise): exact multilinear rank `ranks` when noise=0."""
    core_shape = list(shape)
    for m, r in zip(modes, ranks):
        core_shape[m] = r
    # Decaying core entries give every unfolding a clear spectral gap above the noise.
    core = _rand(tuple(core_shape), seed=seed) + 3.0
    factors = [_orthonormal(shape[m], r, seed + 1 + i) for i, (m, r) in enumerate(zip(modes, ranks))]
    x = multi_mode_dot(core, factors, modes)
    return x + noise * _rand(shape, seed=seed + 99)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("mode", range(4))
def test_unfold_fold_round_trip(mode):
    x = _rand()
    mat = unfold(x, mode)
    assert mat.shape == (SHAPE[mode], x.numel() // SHAPE[mode])
    assert torch.equal(fold(mat, mode, SHAPE), x)


def test_unfold_column_order_is_row_major_over_remaining_modes():
    x = _rand()
    mat = unfold(x, 1)
    for i0, i1, i2, i3 in [(0, 0, 0, 0), (3, 7, 2, 4), (23, 9, 3, 1)]:
        col = (i0 * SHAPE[2] + i2) * SHAPE[3] + i3  # last remaining mode fastest
        assert mat[i1, col] == x[i0, i1, i2, i3]


def test_fold_rejects_wrong_shape():
    with pytest.raises(ValueError, match="cannot fold"):
        fold(torch.zeros(5, 7), 0, (5, 2, 3))


@pytest.mark.parametrize("mode", range(4))
def test_mode_dot_matches_einsum(mode):
    x = _rand()
    m = _rand((7, SHAPE[mode]), seed=1)
    letters = "abcd"
    out_letters = letters.replace(letters[mode], "z")
    expected = torch.einsum(f"z{letters[mode]},{letters}->{out_letters}", m, x)
    got = mode_dot(x, m, mode)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_multi_mode_dot_matches_einsum_and_transpose():
    x = _rand()
    a, b = _rand((24, 6), seed=2), _rand((4, 3), seed=3)  # factors (I_n, R_n)
    projected = multi_mode_dot(x, [a, b], [0, 2], transpose=True)
    expected = torch.einsum("ia,lc,ijlm->ajcm", a, b, x)
    assert projected.shape == (6, 10, 3, 5)
    torch.testing.assert_close(projected, expected, rtol=1e-12, atol=1e-12)
    expanded = multi_mode_dot(projected, [a, b], [0, 2])
    torch.testing.assert_close(expanded, torch.einsum("ia,lc,ajcm->ijlm", a, b, projected))


# ----------------------------------------------------------------------------- HOSVD / HOOI


@pytest.mark.parametrize("algo", [hooi, hosvd])
def test_full_ranks_reproduce_the_tensor(algo):
    x = _rand()
    res = algo(x, SHAPE[:3], MODES)
    assert res.errors == [0.0] and res.n_iter == 0 and res.converged
    assert relative_error(x, res) < 1e-12
    assert all(torch.equal(f, torch.eye(f.shape[0], dtype=f.dtype)) for f in res.factors)


def test_exact_low_multilinear_rank_is_recovered():
    x = _low_rank()
    res = hooi(x, RANKS, MODES)
    assert relative_error(x, res) < 1e-12
    assert res.errors[-1] < 1e-6  # from the core norm: sqrt of a difference of squares
    assert res.converged


def test_result_shapes_and_orthonormal_factors():
    x = _rand()
    res = hooi(x, RANKS, MODES)
    assert isinstance(res, TuckerResult)
    assert res.core.shape == (6, 4, 3, 5)  # head mode untouched
    assert res.modes == MODES and res.ranks == RANKS and res.shape == SHAPE
    for f, mode, rank in zip(res.factors, MODES, RANKS):
        assert f.shape == (SHAPE[mode], rank)
        torch.testing.assert_close(f.T @ f, torch.eye(rank, dtype=f.dtype), rtol=0, atol=1e-12)
        # sign convention: the largest-magnitude entry of each column is positive
        assert (f.gather(0, f.abs().argmax(0, keepdim=True)) > 0).all()


def test_hooi_improves_on_hosvd_and_errors_never_increase():
    x = _rand(seed=5)
    base = hosvd(x, RANKS, MODES)
    res = hooi(x, RANKS, MODES, tol=1e-10, n_iter_max=50)
    assert res.errors[0] <= base.errors[0] + 1e-12  # one sweep from the HOSVD start is no worse
    assert relative_error(x, res) <= relative_error(x, base) + 1e-12
    assert res.errors[-1] < base.errors[0] - 1e-4  # a random tensor has room to improve
    steps = torch.tensor(res.errors).diff()
    assert (steps <= 1e-12).all()
    assert res.n_iter == len(res.errors) and res.converged and abs(steps[-1]) <= 1e-10


def test_start_factor_of_the_first_updated_mode_is_never_read():
    """hooi skips that factor's eigendecomposition: any start there gives the same result, bit for bit."""
    x = _rand(seed=11)
    start = hosvd(x, RANKS, MODES).factors
    junk = torch.linalg.qr(
        torch.randn(SHAPE[MODES[0]], RANKS[0], dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    )[0]  # (I_0, R_0)
    a = hooi(x, RANKS, MODES, n_iter_max=3, tol=0)
    b = hooi(x, RANKS, MODES, n_iter_max=3, tol=0, init=[junk] + start[1:])
    assert torch.equal(a.core, b.core) and all(torch.equal(f, g) for f, g in zip(a.factors, b.factors))
    assert a.errors == b.errors and a.n_iter == 3


def test_skipped_start_factor_is_the_one_of_the_first_rank_reduced_mode():
    """With mode 0 at full rank (identity, never iterated) the first update is mode 1's."""
    x = _rand(seed=15)
    ranks = (SHAPE[0], 4, 3)
    start = hosvd(x, ranks, MODES).factors
    junk = _orthonormal(SHAPE[1], 4, seed=3)  # (I_1, R_1)
    a = hooi(x, ranks, MODES, n_iter_max=3, tol=0)
    b = hooi(x, ranks, MODES, n_iter_max=3, tol=0, init=[start[0], junk, start[2]])
    assert torch.equal(a.core, b.core) and all(torch.equal(f, g) for f, g in zip(a.factors, b.factors))
    assert torch.equal(a.factors[0], torch.eye(SHAPE[0], dtype=x.dtype)) and a.n_iter == 3


@pytest.mark.parametrize("ranks", [(6, 10, 4), (24, 10, 3)], ids=["first", "last"])
def test_one_rank_reduced_mode_gives_the_hosvd(ranks):
    """One sweep is then exact, so it is the only one (no second sweep just to compare errors)."""
    x = _rand(seed=14)
    res, base = hooi(x, ranks, MODES, tol=0), hosvd(x, ranks, MODES)
    assert torch.equal(res.core, base.core) and all(
        torch.equal(f, g) for f, g in zip(res.factors, base.factors)
    )
    assert res.errors == base.errors and res.n_iter == 1 and res.converged


def test_tol_compares_consecutive_sweeps():
    x = _rand(seed=12)
    one = hooi(x, RANKS, MODES, n_iter_max=1, tol=1.0)
    assert one.n_iter == 1 and not one.converged  # nothing to compare with after one sweep
    loose = hooi(x, RANKS, MODES, tol=1.0)
    assert loose.n_iter == 2 and loose.converged


def test_core_norm_error_matches_direct_error():
    x = _rand(seed=6)
    res = hooi(x, RANKS, MODES, n_iter_max=3)
    assert res.n_iter == 3 and not res.converged
    assert abs(res.errors[-1] - relative_error(x, res)) < 1e-10


def test_n_iter_max_zero_is_hosvd():
    x = _rand(seed=7)
    res = hooi(x, RANKS, MODES, n_iter_max=0)
    base = hosvd(x, RANKS, MODES)
    assert res.n_iter == 0 and not res.converged
    assert torch.equal(res.core, base.core)


def test_init_with_factors_equals_hosvd_init():
    x = _rand(seed=8)
    start = hosvd(x, RANKS, MODES).factors
    a = hooi(x, RANKS, MODES, n_iter_max=4)
    b = hooi(x, RANKS, MODES, n_iter_max=4, init=start)
    assert torch.equal(reconstruct(a), reconstruct(b))


def test_deterministic_bit_identical():
    x = _rand(seed=9)
    a, b = hooi(x, RANKS, MODES, n_iter_max=20), hooi(x, RANKS, MODES, n_iter_max=20)
    assert torch.equal(a.core, b.core)
    assert all(torch.equal(f, g) for f, g in zip(a.factors, b.factors))
    assert a.errors == b.errors


def test_float32_input_with_float64_compute():
    x32 = _rand(seed=10, dtype=torch.float32)
    res = hooi(x32, RANKS, MODES, compute_dtype=torch.float64)
    assert res.core.dtype == torch.float64 and all(f.dtype == torch.float64 for f in res.factors)
    # float32 -> float64 is exact, so the result equals the one for the float64 input
    ref = hooi(x32.double(), RANKS, MODES)
    assert torch.equal(reconstruct(res), reconstruct(ref))


def test_float32_compute_is_close_to_float64():
    x = _rand(seed=11)
    r64 = hooi(x, RANKS, MODES, n_iter_max=5)
    r32 = hooi(x.to(torch.bfloat16), RANKS, MODES, n_iter_max=5, compute_dtype=torch.float32)
    assert r32.core.dtype == torch.float32
    assert abs(relative_error(x, r32) - relative_error(x, r64)) < 1e-2  # bf16 input rounding


@pytest.mark.parametrize(
    "modes,ranks", [((0, 1, 2), (5, 3, 2)), ((0, 2), (4, 2)), ((1,), (3,)), ((2, 0), (3, 5))]
)
def test_partial_tucker_matches_tensorly(modes, ranks):
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import partial_tucker
    from tensorly.tenalg import multi_mode_dot as tl_multi_mode_dot

    tl.set_backend("numpy")
    x = _low_rank(modes=modes, ranks=ranks, noise=0.05, seed=3)
    ours = hooi(x, ranks, modes, tol=1e-12)
    # TensorLy 0.10 mis-pairs factors and modes when `modes` is not sorted: give it sorted ones.
    tl_modes, tl_ranks = zip(*sorted(zip(modes, ranks)))
    (core, factors), _ = partial_tucker(
        x.numpy(), rank=list(tl_ranks), modes=list(tl_modes), n_iter_max=200, tol=1e-12
    )
    theirs = torch.from_numpy(tl_multi_mode_dot(core, factors, modes=list(tl_modes)))
    untouched = [m for m in range(4) if m not in modes]
    assert all(ours.core.shape[m] == SHAPE[m] for m in untouched)
    mine = reconstruct(ours)
    assert (mine - theirs).norm() / theirs.norm() < 1e-5
    their_err = ((x - theirs).norm() / x.norm()).item()
    assert relative_error(x, ours) <= their_err + 1e-8


@pytest.mark.parametrize(
    "ranks,modes,match",
    [
        ((0, 4, 3), MODES, "rank 0 for mode 0 is out of range"),
        ((6, 11, 3), MODES, "between 1 and 10"),
        ((6, 4), MODES, "2 ranks for 3 modes"),
        ((6.0, 4, 3), MODES, "rank 6.0"),
        ((True, 4, 3), MODES, "rank True"),
        ((6, 4, 3), (0, 1, 1), "distinct"),
        ((6, 4, 3), (0, 1, 4), "mode 4 is not a mode"),
        ((), (), "at least one mode"),
    ],
)
@pytest.mark.parametrize("algo", [hooi, hosvd])
def test_invalid_arguments_raise_value_error(algo, ranks, modes, match):
    with pytest.raises(ValueError, match=match):
        algo(_rand(), ranks, modes)


def test_invalid_compute_dtype_and_options():
    x = _rand()
    with pytest.raises(ValueError, match="compute_dtype"):
        hooi(x, RANKS, MODES, compute_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="init"):
        hooi(x, RANKS, MODES, init="random")
    with pytest.raises(ValueError, match="n_iter_max"):
        hooi(x, RANKS, MODES, n_iter_max=-1)


def test_negative_modes_are_normalised():
    x = _rand(seed=12)
    a = hooi(x, RANKS, (-4, -3, -2), n_iter_max=2)
    b = hooi(x, RANKS, MODES, n_iter_max=2)
    assert a.modes == MODES and torch.equal(a.core, b.core)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_and_gpu_agree(dtype):
    x = _low_rank(noise=0.05, seed=4)
    cpu = hooi(x, RANKS, MODES, compute_dtype=dtype, tol=1e-10)
    gpu = hooi(x.cuda(), RANKS, MODES, compute_dtype=dtype, tol=1e-10)
    assert gpu.core.is_cuda
    rec_cpu, rec_gpu = reconstruct(cpu), reconstruct(gpu).cpu()
    assert (rec_cpu - rec_gpu).norm() / rec_cpu.norm() < 1e-5
    for f, g in zip(cpu.factors, gpu.factors):  # signs fixed, so factors agree too
        assert (f - g.cpu()).abs().max() < 1e-4


def test_all_mode_orders_give_the_same_fit():
    x = _low_rank(noise=0.05, seed=13)
    fits = [
        relative_error(x, hooi(x, [RANKS[MODES.index(m)] for m in order], order, tol=1e-12))
        for order in itertools.permutations(MODES)
    ]
    assert max(fits) - min(fits) < 1e-10
