"""Multilinear algebra on dense torch tensors: mode-n unfolding and folding, mode-n products.

Notation of Kolda & Bader, "Tensor Decompositions and Applications", SIAM Review 2009: the mode-n
unfolding `X_(n)` has the mode-n fibres of `x` as its columns; `x ×_n m` multiplies every mode-n
fibre of `x` by the matrix `m`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tensorllm.tensor.checks import check_mode


def unfold(x: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-`mode` unfolding of `x`: a `(I_mode, prod(other sizes))` matrix.

    Column ordering: the remaining modes keep their original order and are flattened row-major
    (C order, the last mode varies fastest): `unfold(x, n) == x.movedim(n, 0).reshape(I_n, -1)`.
    This is TensorLy's convention; Kolda & Bader flatten with the first mode fastest instead.
    The two differ by a column permutation, which changes no Gram matrix, singular vector or
    Tucker factor.
    """
    mode = check_mode(mode, x.ndim)
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)  # (I_mode, prod(others))


def fold(mat: torch.Tensor, mode: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of `unfold`: `fold(unfold(x, n), n, x.shape)` equals `x`."""
    shape = tuple(int(s) for s in shape)
    mode = check_mode(mode, len(shape))
    rest = shape[:mode] + shape[mode + 1 :]
    if tuple(mat.shape) != (shape[mode], math.prod(rest)):
        raise ValueError(
            f"cannot fold a matrix of shape {tuple(mat.shape)} into {shape} along mode {mode}: "
            f"expected ({shape[mode]}, {math.prod(rest)})"
        )
    return mat.reshape((shape[mode],) + rest).movedim(0, mode)  # shape


# ----------------------------------------------------------------------------- mode products


def mode_dot(x: torch.Tensor, m: torch.Tensor, mode: int) -> torch.Tensor:
    """`x ×_mode m`: multiplies every mode-`mode` fibre of `x` by `m` of shape `(J, I_mode)`.

    The result has the shape of `x` with size `J` in mode `mode`.
    """
    mode = check_mode(mode, x.ndim)
    size = x.shape[mode]
    if m.ndim != 2 or m.shape[1] != size:
        raise ValueError(
            f"mode_dot: matrix of shape {tuple(m.shape)} does not fit mode {mode} of size {size}"
        )
    before = math.prod(x.shape[:mode])
    after = math.prod(x.shape[mode + 1 :])
    out_shape = x.shape[:mode] + (m.shape[0],) + x.shape[mode + 1 :]
    # Three layouts so that no case needs a permuted copy of x.
    if before == 1:
        out = m @ x.reshape(size, after)  # (J, after)
    elif after == 1:
        out = x.reshape(before, size) @ m.T  # (before, J)
    else:
        out = torch.matmul(m, x.reshape(before, size, after))  # (before, J, after)
    return out.reshape(out_shape)


def multi_mode_dot(
    x: torch.Tensor,
    mats: Sequence[torch.Tensor],
    modes: Sequence[int],
    transpose: bool = False,
) -> torch.Tensor:
    """`x ×_{modes[0]} mats[0] ×_{modes[1]} mats[1] ...` (with `mats[i].T` if `transpose`).

    With `transpose=True` and factors `(I_n, R_n)` this projects `x` onto the factors (gives the
    core); with `transpose=False` it expands a core back. Products along different modes commute;
    they are applied in the order that shrinks the tensor most first (cheapest), which depends only
    on the shapes, so results stay deterministic.
    """
    if len(mats) != len(modes):
        raise ValueError(f"multi_mode_dot: {len(mats)} matrices for {len(modes)} modes")
    modes = [check_mode(m, x.ndim) for m in modes]
    if len(set(modes)) != len(modes):
        raise ValueError(f"multi_mode_dot: repeated mode in {modes}")
    ops = [(mode, mat.T if transpose else mat) for mode, mat in zip(modes, mats)]
    ops.sort(key=lambda op: op[1].shape[0] / max(op[1].shape[1], 1))  # output/input size ratio
    for mode, mat in ops:
        x = mode_dot(x, mat, mode)
    return x


# ----------------------------------------------------------------------------- HOSVD / HOOI
