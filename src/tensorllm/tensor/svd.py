"""Truncated SVD of one matrix (the math behind LASER, Sharma et al. 2023, arXiv 2312.13558).

`truncated_svd` returns the best rank-k approximation (Eckart-Young) computed exactly with
`torch.linalg.svd`, or approximately with a randomised range finder (Halko, Martinsson & Tropp,
"Finding Structure with Randomness", SIAM Review 2011, algorithms 4.4 + 5.1).

LASER's reference code calls `torch.svd_lowrank` without a seed, so its chosen settings could not
be reproduced. Here the randomised path demands a seed and draws its test matrix on the CPU with a
`torch.Generator`, so the same seed gives the same test matrix on every device; the exact path is
the default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tensorllm.tensor.checks import is_int

METHODS = ("exact", "randomized")


def truncated_svd(
    w: torch.Tensor,
    rank: int,
    *,
    method: str = "exact",
    seed: int | None = None,
    n_oversamples: int = 10,
    n_iter: int = 2,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rank-`rank` approximation of the matrix `w`, same shape, dtype and device as `w`.

    method:        "exact" (`torch.linalg.svd`) or "randomized" (needs `seed`).
    seed:          seed of the randomised test matrix; required for "randomized", unused otherwise.
    n_oversamples: extra columns of the randomised range finder (Halko et al. use 5-10).
    n_iter:        power iterations of the randomised range finder (LASER's reference uses 2).
    compute_dtype: float32 (default) or float64; the SVD runs in this dtype.
    """
    left, right = svd_factors(
        w,
        rank,
        method=method,
        seed=seed,
        n_oversamples=n_oversamples,
        n_iter=n_iter,
        compute_dtype=compute_dtype,
    )
    return (left @ right).to(w.dtype)  # (m, n)


def svd_factors(
    w: torch.Tensor,
    rank: int,
    *,
    method: str = "exact",
    seed: int | None = None,
    n_oversamples: int = 10,
    n_iter: int = 2,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors of `truncated_svd`: left = U_k S_k `(m, k)` and right = V_k^T `(k, n)` in
    `compute_dtype`, with `left @ right` exactly the approximation `truncated_svd` returns (same options)."""
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        raise ValueError("truncated_svd expects a 2-D torch.Tensor")
    if w.is_complex():
        raise ValueError("complex matrices are not supported")
    m, n = w.shape
    if not is_int(rank) or not 1 <= rank <= min(m, n):
        raise ValueError(
            f"rank {rank!r} is out of range for a {m} x {n} matrix: "
            f"it must be an integer between 1 and {min(m, n)}"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
    a = w.to(compute_dtype)  # (m, n)
    if method == "exact":
        u, s, vh = torch.linalg.svd(a, full_matrices=False)  # (m, k0), (k0,), (k0, n)
    else:
        if seed is None:
            raise ValueError(
                "the randomized SVD needs an explicit seed (without one the result changes "
                "from run to run); pass seed=..., or use method='exact'"
            )
        if not is_int(n_oversamples) or n_oversamples < 0:
            raise ValueError(f"n_oversamples must be an integer >= 0, got {n_oversamples!r}")
        if not is_int(n_iter) or n_iter < 0:
            raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")
        u, s, vh = _randomized_svd(a, rank, int(seed), n_oversamples, n_iter)
    return u[:, :rank] * s[:rank], vh[:rank]  # (m, k), (k, n)


def laser_rank(shape: Sequence[int], rho: float) -> int:
    """LASER's kept rank: `max(1, floor(min(m, n) * rho))` for a matrix of shape `(m, n)`.

    The product is taken in floating point as in the reference code, so e.g. rho=0.29 on
    min(m, n)=100 keeps 28 (0.29 * 100 == 28.999999999999996).
    """
    shape = tuple(shape)
    if len(shape) != 2 or not all(is_int(d) and d >= 1 for d in shape):
        raise ValueError(f"laser_rank expects a matrix shape (m, n), got {shape}")
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    return max(1, math.floor(min(shape) * rho))


def _randomized_svd(
    a: torch.Tensor, rank: int, seed: int, n_oversamples: int, n_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomised range finder with QR-stabilised power iterations, then an exact small SVD."""
    m, n = a.shape
    width = min(rank + n_oversamples, m, n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # Drawn on the CPU in float64 so that every device and compute dtype sees the same matrix.
    omega = torch.randn(n, width, generator=gen, dtype=torch.float64)  # (n, l)
    omega = omega.to(device=a.device, dtype=a.dtype)
    q = torch.linalg.qr(a @ omega).Q  # (m, l)
    for _ in range(n_iter):
        z = torch.linalg.qr(a.T @ q).Q  # (n, l)
        q = torch.linalg.qr(a @ z).Q  # (m, l)
    ub, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)  # (l, l), (l,), (l, n)
    return q @ ub, s, vh  # (m, l), (l,), (l, n)
