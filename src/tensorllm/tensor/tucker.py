"""Tucker decomposition of dense torch tensors: HOSVD and HOOI (mode products: multilinear.py).

Notation follows Kolda & Bader, "Tensor Decompositions and Applications", SIAM Review 2009:
`x ×_n m` multiplies every mode-n fibre of `x` by the matrix `m`, and a Tucker model is
`x ~= core ×_1 U_1 ×_2 U_2 ... ×_N U_N` with orthonormal factor columns.
HOSVD and HOOI are from De Lathauwer, De Moor & Vandewalle, "A Multilinear Singular Value
Decomposition" and "On the Best Rank-(R1, ..., RN) Approximation of Higher-Order Tensors",
SIAM J. Matrix Anal. Appl. 2000.

Everything here is a *partial* Tucker: only the modes listed in `modes` get a factor, the other
modes are left as they are (for TensorLLM, the head mode).

Implementation choices (all for speed on a 4096 x 128 x 4 x 32 tensor, and for reproducibility):
- The leading left singular vectors of an unfolding `Y_(n)` are computed as the leading
  eigenvectors of its Gram matrix `Y_(n) Y_(n)^T` (`torch.linalg.eigh`), which is `I_n x I_n`,
  instead of an SVD of the wide `I_n x prod(others)` matrix. Squaring the condition number only
  blurs directions whose singular values are below sqrt(eps) of the largest; they do not
  change the subspace we keep by more than rounding.
- HOOI contracts the other factors first (the "projected tensor") and forms the Gram of that.
- The error is tracked through the core norm: for orthonormal factors
  `||x - x_hat||^2 = ||x||^2 - ||core||^2`, so no reconstruction happens inside the loop.
- Every eigenvector's sign is fixed (largest-magnitude entry positive), so repeated runs are
  bit-identical and CPU and GPU agree up to rounding.
- A rank equal to the mode size gets the identity factor (no eigendecomposition): the
  decomposition is then exact in that mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tensorllm.tensor.checks import check_mode, is_int
from tensorllm.tensor.multilinear import mode_dot, multi_mode_dot, unfold

COMPUTE_DTYPES = (torch.float32, torch.float64)


@dataclass
class TuckerResult:
    """A partial Tucker decomposition `x ~= core ×_{modes[0]} factors[0] ×_{modes[1]} ...`.

    core:      the core tensor; mode `modes[i]` has size `ranks[i]`, other modes keep their size.
    factors:   one `(I_n, R_n)` matrix with orthonormal columns per entry of `modes`.
    modes:     the decomposed modes, in the order the caller gave them.
    errors:    relative reconstruction error `||x - x_hat|| / ||x||`; for HOOI `errors[k]` is the
               error after sweep `k + 1`; when no sweep runs (`hosvd`, `n_iter_max=0`, or every
               rank full) the single entry is the error of the starting point.
    n_iter:    number of HOOI sweeps run (0 for `hosvd`).
    converged: whether the error changed by at most `tol` between the last two sweeps (True
               for `hosvd` and when every rank is full, as there is nothing to iterate, and after
               one sweep when only one rank is below its mode's size, as that sweep is exact).
    """

    core: torch.Tensor
    factors: list[torch.Tensor]
    modes: tuple[int, ...]
    errors: list[float]
    n_iter: int
    converged: bool

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(int(f.shape[1]) for f in self.factors)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the tensor this decomposition approximates."""
        shape = list(self.core.shape)
        for mode, f in zip(self.modes, self.factors):
            shape[mode] = int(f.shape[0])
        return tuple(shape)


def hosvd(
    x: torch.Tensor,
    ranks: Sequence[int],
    modes: Sequence[int],
    *,
    compute_dtype: torch.dtype = torch.float64,
) -> TuckerResult:
    """Truncated higher-order SVD on `modes`: each factor is the leading `R_n` left singular
    vectors of the mode-n unfolding of `x` itself (De Lathauwer et al. 2000).
    """
    modes, ranks = _check_args(x, ranks, modes, compute_dtype)
    xc = x.to(compute_dtype)
    factors = [_leading_vectors(xc, r, m) for m, r in zip(modes, ranks)]
    core = _project(xc, factors, modes)
    err = _error_from_core(_sq_norm(xc), core)
    return TuckerResult(core, factors, tuple(modes), [err], 0, True)


def hooi(
    x: torch.Tensor,
    ranks: Sequence[int],
    modes: Sequence[int],
    *,
    n_iter_max: int = 100,
    tol: float = 1e-8,
    init: str | Sequence[torch.Tensor] = "hosvd",
    compute_dtype: torch.dtype = torch.float64,
) -> TuckerResult:
    """Partial Tucker decomposition by higher-order orthogonal iteration (HOOI).

    x:             tensor of any float dtype, on any device; it is copied to `compute_dtype`
                   (float32 or float64) on the same device, and all results are in that dtype.
    ranks:         one rank per entry of `modes`, each between 1 and the size of that mode.
    modes:         the modes to decompose; the other modes are left untouched.
    n_iter_max:    maximum number of sweeps (one sweep updates every factor once).
    tol:           stop when the relative error changes by at most `tol` from one sweep to the next
                   (so at least two sweeps run when `n_iter_max >= 2`, unless only one mode has
                   its rank below its size: then the first sweep is already optimal).
    init:          "hosvd", or a list of starting factors `(I_n, R_n)` with orthonormal columns
                   (when a sweep runs, the one of the first mode whose rank is below its size is
                   never read: the first update replaces it using only the others).
    compute_dtype: float64 (default, accurate) or float32 (faster on GPUs). With float32 the
                   errors computed from the core norm are only good to about 1e-6 (and read up
                   to ~1e-3 for a near-exact fit, from cancellation in `||x||^2 - ||core||^2`),
                   so a `tol` below ~1e-6 rarely stops early; `relative_error` is exact.

    Each sweep replaces factor n by the leading eigenvectors of the Gram matrix of
    `x ×_{m != n} U_m^T` unfolded along n; the error never increases from one sweep to the next
    (up to rounding).
    """
    modes, ranks = _check_args(x, ranks, modes, compute_dtype)
    if not is_int(n_iter_max) or n_iter_max < 0:
        raise ValueError(f"n_iter_max must be an integer >= 0, got {n_iter_max!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    xc = x.to(compute_dtype)
    norm_x2 = _sq_norm(xc)
    # Full-rank modes keep the identity factor and never enter the iteration.
    active = [i for i, (m, r) in enumerate(zip(modes, ranks)) if r < xc.shape[m]]
    sweeps = bool(active) and n_iter_max > 0

    if isinstance(init, str):
        if init != "hosvd":
            raise ValueError(f"init must be 'hosvd' or a list of factors, got {init!r}")
        # The first sweep's first update reads only the *other* factors, so the start factor of the
        # first active mode is never used when a sweep runs: skip its eigendecomposition (for a
        # 4096 x 128 x 4 x 32 layer this is one of three 4096 x 4096 `eigh`s, ~30% of the time).
        unused = active[0] if sweeps else None
        factors = [
            None if i == unused else _leading_vectors(xc, r, m) for i, (m, r) in enumerate(zip(modes, ranks))
        ]
    else:
        factors = _check_init(init, xc, modes, ranks)

    if not sweeps:
        core = _project(xc, factors, modes)
        err = _error_from_core(norm_x2, core)
        return TuckerResult(core, factors, tuple(modes), [err], 0, not active)
    errors: list[float] = []
    converged = False
    while not converged and len(errors) < n_iter_max:
        for i in active:
            others = [j for j in range(len(modes)) if j != i]
            y = _project(xc, [factors[j] for j in others], [modes[j] for j in others])
            factors[i] = _leading_vectors(y, ranks[i], modes[i])
        # y is x projected on every factor but the last active one: one more product gives the core.
        last = active[-1]
        core = mode_dot(y, factors[last].T, modes[last])
        errors.append(_error_from_core(norm_x2, core))
        # With one rank-reduced mode the sweep computed the optimum outright (the leading vectors of x).
        converged = len(active) == 1 or (len(errors) > 1 and abs(errors[-2] - errors[-1]) <= tol)
    return TuckerResult(core, factors, tuple(modes), errors, len(errors), converged)


def reconstruct(result: TuckerResult) -> torch.Tensor:
    """The dense tensor `core ×_{modes} factors`, in the dtype and on the device of the core."""
    mats, modes = [], []
    for mode, f in zip(result.modes, result.factors):
        if not _is_identity(f):
            mats.append(f)
            modes.append(mode)
    return multi_mode_dot(result.core, mats, modes)


def relative_error(x: torch.Tensor, result: TuckerResult) -> float:
    """`||x - reconstruct(result)|| / ||x||`, computed directly (0.0 for an all-zero `x`)."""
    x_hat = reconstruct(result)
    if tuple(x.shape) != tuple(x_hat.shape):
        raise ValueError(f"tensor of shape {tuple(x.shape)} vs a decomposition of shape {tuple(x_hat.shape)}")
    x = x.to(device=x_hat.device, dtype=x_hat.dtype)
    norm_x = torch.linalg.vector_norm(x).item()
    if norm_x == 0.0:
        return 0.0
    return torch.linalg.vector_norm(x - x_hat).item() / norm_x


# ----------------------------------------------------------------------------- helpers


def _leading_vectors(y: torch.Tensor, rank: int, mode: int) -> torch.Tensor:
    """Leading `rank` left singular vectors of `unfold(y, mode)`, sign-fixed: `(I_mode, rank)`."""
    size = y.shape[mode]
    if rank == size:
        return torch.eye(size, dtype=y.dtype, device=y.device)  # (I, I)
    mat = unfold(y, mode)  # (I, prod(others)); a view when mode == 0
    gram = mat @ mat.T  # (I, I)
    _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues; vecs: (I, I)
    u = vecs[:, -rank:].flip(-1)  # (I, R), largest eigenvalue first
    return _fix_signs(u)


def _fix_signs(u: torch.Tensor) -> torch.Tensor:
    """Flip columns so that each column's largest-magnitude entry is positive."""
    rows = u.abs().argmax(dim=0)  # (R,)
    signs = torch.sign(u[rows, torch.arange(u.shape[1], device=u.device)])  # (R,)
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return u * signs  # (I, R)


def _project(x: torch.Tensor, factors: Sequence[torch.Tensor], modes: Sequence[int]) -> torch.Tensor:
    """`x ×_n U_n^T` over the given modes, skipping identity (full-rank) factors."""
    keep = [(f, m) for f, m in zip(factors, modes) if not _is_identity(f)]
    return multi_mode_dot(x, [f for f, _ in keep], [m for _, m in keep], transpose=True)


def _is_identity(f: torch.Tensor) -> bool:
    if f.shape[0] != f.shape[1]:
        return False
    return bool(torch.equal(f, torch.eye(f.shape[0], dtype=f.dtype, device=f.device)))


def _sq_norm(x: torch.Tensor) -> float:
    return torch.linalg.vector_norm(x, dtype=torch.float64).item() ** 2


def _error_from_core(norm_x2: float, core: torch.Tensor) -> float:
    """Relative error of an orthonormal Tucker model: sqrt(||x||^2 - ||core||^2) / ||x||."""
    if norm_x2 == 0.0:
        return 0.0
    return math.sqrt(max(norm_x2 - _sq_norm(core), 0.0) / norm_x2)


def _check_args(
    x: torch.Tensor, ranks: Sequence[int], modes: Sequence[int], compute_dtype: torch.dtype
) -> tuple[list[int], list[int]]:
    """Validate and normalise (modes, ranks); raises ValueError with a one-line reason."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise ValueError("complex tensors are not supported")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
    modes = [check_mode(m, x.ndim) for m in modes]
    if not modes:
        raise ValueError("at least one mode must be decomposed")
    if len(set(modes)) != len(modes):
        raise ValueError(f"modes must be distinct, got {modes}")
    ranks = list(ranks)
    if len(ranks) != len(modes):
        raise ValueError(f"got {len(ranks)} ranks for {len(modes)} modes {modes}; give one rank per mode")
    for mode, rank in zip(modes, ranks):
        size = x.shape[mode]
        if not is_int(rank) or not 1 <= rank <= size:
            raise ValueError(
                f"rank {rank!r} for mode {mode} is out of range: it must be an integer "
                f"between 1 and {size} (the size of mode {mode})"
            )
    return modes, [int(r) for r in ranks]


def _check_init(
    init: Sequence[torch.Tensor], xc: torch.Tensor, modes: list[int], ranks: list[int]
) -> list[torch.Tensor]:
    init = list(init)
    if len(init) != len(modes):
        raise ValueError(f"init has {len(init)} factors for {len(modes)} modes")
    factors = []
    for f, m, r in zip(init, modes, ranks):
        if tuple(f.shape) != (xc.shape[m], r):
            raise ValueError(
                f"init factor for mode {m} has shape {tuple(f.shape)}, expected {(xc.shape[m], r)}"
            )
        f = f.to(device=xc.device, dtype=xc.dtype)
        factors.append(torch.eye(r, dtype=xc.dtype, device=xc.device) if r == xc.shape[m] else f)
    return factors
