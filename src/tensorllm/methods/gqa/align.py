"""Pure math: the orthogonal transforms that align attention heads without changing the model.

Reference: Jin et al., "Align Attention Heads Before Merging Them" (arXiv 2412.20677).

Everything works on cross products of head activations, never on the activations:
`C[i, j] = sum_t a_i(t) a_j(t)^T` (d x d) for heads i, j. Aligning head j onto head i with an
orthogonal T minimises `sum_t ||T a_j - a_i||^2 = E_i + E_j - 2 tr(T C[j, i])`, so every
question here is "which allowed T maximises tr(T M)".

Allowed transforms (`Planes`):
- values: any orthogonal d x d (classic Procrustes: M = U S V^T -> T = V U^T);
- keys under RoPE: one 2x2 rotation per RoPE plane (a rotation commutes with RoPE's rotation of
  that plane, a reflection does not), plus any orthogonal map of the dimensions RoPE leaves alone
  (partial rotary). Without RoPE all dimensions are free.
In a plane (a, b) with R = [[c, -s], [s, c]]: tr(R M_ab) = c (M_aa + M_bb) + s (M_ab - M_ba),
maximised at angle atan2(M_ab - M_ba, M_aa + M_bb) with value hypot(M_aa + M_bb, M_ab - M_ba).

Norms of queries and keys after the projection (`Planes.restrict`). T is folded into the projection
weights, so it acts *before* the norm n(x) = s * x / rms(x) (s: the scale, `w`, or Gemma's `1 + w`),
and the model stays the same iff n(T x) = T n(x) for every x, on the keys and on the queries of the
head. T is orthogonal on the norm's span, so rms(T x) = rms(x) in both cases the families use: a
norm over each head (Qwen3, Gemma-3: T acts inside the head) and a norm over the whole projection
(OLMo-2: T acts on one head's block, the rest is unchanged, ||.|| of the whole vector is kept). What
remains is diag(s) T = T diag(s) on the head's d coordinates, for the key scale and for the scale
of every query head reading that key head:
- a RoPE plane (a, b) with s_a = s_b (for every scale): any rotation commutes; keep it;
- a RoPE plane with s_a != s_b: [[c, -s], [s, c]] diag(s_a, s_b) = diag(s_a, s_b) [[c, -s], [s, c]]
  forces s = 0, so only the identity and the half turn -I (c = -1): a `flip`, best sign(M_aa + M_bb);
- dimensions without RoPE: any orthogonal map that is block-diagonal over the sets of dimensions
  whose scales are all equal (`free_blocks`);
- LayerNorm (Phi's qk_layernorm) also subtracts the mean: T must fix the all-ones vector, which no
  plane rotation but the identity does, so keys are not rotated at all (`fixed`).
The scales are compared exactly: equal to the last bit, or not allowed. With a per-head norm the
scale is shared by all heads; with a norm over the whole projection each head has its own, and the
intersection over the heads of a layer is used, so one `Planes` serves every head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _no_pairs() -> torch.Tensor:
    return torch.zeros(0, 2, dtype=torch.long)


def _no_dims() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class Planes:
    """Which transforms of a head's d dimensions are allowed: rotations in `pairs`, I or -I in `flips`,
    anything orthogonal inside each of `free_blocks` (default: `free` is one block), identity on `fixed`."""

    pairs: torch.Tensor  # (P, 2) long: dimension pairs RoPE rotates together
    free: torch.Tensor  # (F,) long: dimensions with no RoPE (any orthogonal map)
    head_dim: int
    flips: torch.Tensor = field(default_factory=_no_pairs)  # (Q, 2): RoPE planes allowed only I or -I
    fixed: torch.Tensor = field(default_factory=_no_dims)  # dimensions never moved
    free_blocks: tuple[torch.Tensor, ...] | None = None  # a partition of `free`; None: one block

    def blocks(self) -> tuple[torch.Tensor, ...]:
        if self.free_blocks is not None:
            return self.free_blocks
        return (self.free,) if self.free.numel() else ()

    def restrict(self, scales: torch.Tensor | None, *, centred: bool = False) -> Planes:
        """The allowed transforms that also commute with the norms whose scales are the rows of
        `scales` (m, d): see the module docstring. centred=True (LayerNorm): nothing moves."""
        d = self.head_dim
        if centred:
            return Planes(_no_pairs(), _no_dims(), d, fixed=torch.arange(d))
        if scales is None:
            return self
        scales = scales.reshape(-1, d)  # (m, d)
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        same = (scales[:, a] == scales[:, b]).all(0)  # (P,): the plane's two scales are equal in every row
        blocks = []
        for block in self.blocks():
            _, which = torch.unique(scales[:, block].T, dim=0, return_inverse=True)  # equal columns, one set
            blocks += [block[which == u] for u in range(int(which.max()) + 1)]
        flips = torch.cat([self.flips, self.pairs[~same]])
        return Planes(self.pairs[same], self.free, d, flips, self.fixed, tuple(blocks))

    @classmethod
    def for_rope(cls, head_dim: int, rotary_dims: int, pairing: str | None) -> Planes:
        """RoPE pairing of Hugging Face ("half": i with i + r/2) or GPT-J/Meta ("interleaved": 2i, 2i+1)."""
        r = 0 if pairing is None else int(rotary_dims)
        if r % 2 or not 0 <= r <= head_dim:
            raise ValueError(f"rotary dims {r} must be even and at most head_dim {head_dim}")
        half = torch.arange(r // 2)
        if pairing == "half":
            pairs = torch.stack([half, half + r // 2], dim=1)
        elif pairing == "interleaved":
            pairs = torch.stack([2 * half, 2 * half + 1], dim=1)
        elif pairing is None:
            pairs = torch.zeros(0, 2, dtype=torch.long)
        else:
            raise ValueError(f"unknown RoPE pairing {pairing!r}")
        return cls(pairs, torch.arange(r, head_dim), head_dim)

    @classmethod
    def orthogonal(cls, head_dim: int) -> Planes:
        """Any orthogonal transform (values, or keys without RoPE)."""
        return cls(torch.zeros(0, 2, dtype=torch.long), torch.arange(head_dim), head_dim)


# Procrustes method per device type ("newton_schulz" where absent); tests run the GPU's on the CPU
PROCRUSTES_BY_DEVICE = {"cpu": "svd"}


def _newton_schulz(A: torch.Tensor, max_iters: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The orthogonal polar factor U V^T of a batch A = U S V^T (..., k, k) by the Newton-Schulz
    iteration X <- X (3 I - X^T X) / 2 from X = A / ||A||_F (every singular value in (0, 1]: each
    grows towards 1, at least x1.5 per step while small, then quadratically). Matrix products only,
    so a GPU runs a whole batch in a few hundred kernels; an SVD of a batch of k > 32 matrices there
    is one cuSOLVER call per matrix. Returns (X, converged (...,)): ||X^T X - I||_max <= tol; a
    singular A (a zero singular value stays zero) never converges."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    scale = torch.linalg.matrix_norm(A).clamp_min(torch.finfo(A.dtype).tiny)  # (...,) Frobenius
    X = A / scale[..., None, None]
    for step in range(max_iters + 1):
        XtX = X.transpose(-1, -2) @ X  # the step's product, and the check of the X it came from
        if step % 8 == 0 or step == max_iters:  # one host sync per 8 steps
            converged = (XtX - eye).abs().amax((-2, -1)) <= tol
            if bool(converged.all()) or step == max_iters:
                break
        X = 1.5 * X - 0.5 * (X @ XtX)
    return X, converged


def procrustes(M: torch.Tensor, *, method: str | None = None) -> torch.Tensor:
    """The orthogonal T (..., k, k) maximising tr(T M) for M (..., k, k): T = V U^T for M = U S V^T
    (classic Procrustes), which is the polar factor of M^T.

    method "svd" (the CPU's default: LAPACK is fastest there) or "newton_schulz" (the default
    elsewhere; a matrix it cannot converge, e.g. a singular one, falls back to the SVD); None: the
    device's entry in PROCRUSTES_BY_DEVICE."""
    method = method or PROCRUSTES_BY_DEVICE.get(M.device.type, "newton_schulz")
    if method == "svd":
        U, _, Vh = torch.linalg.svd(M)
        return Vh.transpose(-1, -2) @ U.transpose(-1, -2)  # V U^T
    if method != "newton_schulz":
        raise ValueError(f"unknown Procrustes method {method!r}")
    tol = 64 * M.shape[-1] * torch.finfo(M.dtype).eps
    T, ok = _newton_schulz(M.transpose(-1, -2), max_iters=128, tol=tol)
    if not bool(ok.all()):
        T = T.clone()
        T[~ok] = procrustes(M[~ok], method="svd")
    return T


def nuclear_norm(M: torch.Tensor) -> torch.Tensor:
    """max over orthogonal T of tr(T M) = the sum of M's singular values, for M (..., k, k) -> (...)."""
    if PROCRUSTES_BY_DEVICE.get(M.device.type, "newton_schulz") == "svd":
        return torch.linalg.svdvals(M).sum(-1)
    T = procrustes(M)
    return (T * M.transpose(-1, -2)).sum((-2, -1))  # tr(T M)


def _plane_terms(M: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = pairs[:, 0].to(M.device), pairs[:, 1].to(M.device)
    cos_part = M[..., a, a] + M[..., b, b]  # (..., P)
    sin_part = M[..., a, b] - M[..., b, a]  # (..., P)
    return cos_part, sin_part


def best_score(M: torch.Tensor, planes: Planes) -> torch.Tensor:
    """max over allowed T of tr(T M), for a batch M (..., d, d) -> (...)."""
    cos_part, sin_part = _plane_terms(M, planes.pairs)
    score = torch.hypot(cos_part, sin_part).sum(-1)
    score = score + _plane_terms(M, planes.flips)[0].abs().sum(-1)  # I or -I: |M_aa + M_bb|
    if planes.fixed.numel():
        i = planes.fixed.to(M.device)
        score = score + M[..., i, i].sum(-1)
    for block in planes.blocks():
        f = block.to(M.device)
        score = score + nuclear_norm(M[..., f[:, None], f])
    return score


def best_transform(M: torch.Tensor, planes: Planes) -> torch.Tensor:
    """The allowed orthogonal T (..., d, d) maximising tr(T M) for M (..., d, d)."""
    d = planes.head_dim
    T = torch.zeros(*M.shape[:-2], d, d, dtype=M.dtype, device=M.device)
    if planes.pairs.numel():
        a, b = planes.pairs[:, 0].to(M.device), planes.pairs[:, 1].to(M.device)
        cos_part, sin_part = _plane_terms(M, planes.pairs)
        norm = torch.hypot(cos_part, sin_part)
        degenerate = norm <= torch.finfo(M.dtype).tiny
        c = torch.where(
            degenerate, torch.ones_like(norm), cos_part / norm.clamp_min(torch.finfo(M.dtype).tiny)
        )
        s = torch.where(
            degenerate, torch.zeros_like(norm), sin_part / norm.clamp_min(torch.finfo(M.dtype).tiny)
        )
        T[..., a, a], T[..., a, b], T[..., b, a], T[..., b, b] = c, -s, s, c
    if planes.flips.numel():
        a, b = planes.flips[:, 0].to(M.device), planes.flips[:, 1].to(M.device)
        cos_part = _plane_terms(M, planes.flips)[0]
        sign = torch.where(cos_part < 0, -torch.ones_like(cos_part), torch.ones_like(cos_part))
        T[..., a, a], T[..., b, b] = sign, sign
    if planes.fixed.numel():
        i = planes.fixed.to(M.device)
        T[..., i, i] = 1.0
    for block in planes.blocks():
        f = block.to(M.device)
        T[..., f[:, None], f] = procrustes(M[..., f[:, None], f])
    return T


def cross_blocks(C: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(n*d, n*d) Gram of all heads' activations -> (n, n, d, d) with [i, j] = sum_t a_i a_j^T."""
    return C.reshape(heads, head_dim, heads, head_dim).permute(0, 2, 1, 3)


def similarity(blocks: torch.Tensor, planes: Planes | None) -> torch.Tensor:
    """(n, n) cosine of every pair of heads after the best allowed alignment; 0 on the diagonal.

    planes=None: no alignment, the plain cosine tr(C_ij) / sqrt(E_i E_j).
    """
    n = blocks.shape[0]
    energy = torch.diagonal(blocks, dim1=-2, dim2=-1).sum(-1).diagonal()  # (n,) = ||a_i||^2
    iu = torch.triu_indices(n, n, offset=1, device=blocks.device)
    pair = blocks[iu[0], iu[1]]  # (n(n-1)/2, d, d); the scores are symmetric in (i, j)
    score = best_score(pair, planes) if planes is not None else torch.diagonal(pair, dim1=-2, dim2=-1).sum(-1)
    denom = (energy[iu[0]] * energy[iu[1]]).sqrt()
    cos = torch.where(
        denom > 0, score / denom.clamp_min(torch.finfo(blocks.dtype).tiny), torch.zeros_like(score)
    )
    S = torch.zeros(n, n, dtype=blocks.dtype, device=blocks.device)
    S[iu[0], iu[1]] = cos
    return S + S.T


def group_blocks(blocks: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """(n, n, d, d) cross blocks -> (G, m, m, d, d) of G equal groups: [g, h, j] = sum_t a_h a_j^T for
    the g-th group's members h and j."""
    idx = torch.tensor(groups, device=blocks.device)  # (G, m)
    return blocks[idx[:, :, None], idx[:, None, :]]


def _means(sub: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """M[g, h] = sum_t a_h mean_g^T = (1/m) sum_j sub[g, h, j] T[g, j]^T, (G, m, d, d)."""
    return torch.einsum("ghjab,gjcb->ghac", sub, T) / sub.shape[1]


def _kept(T: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(G,) m ||mean_g||^2 summed over tokens = sum_h tr(T_h M_h) (M = _means(sub, T))."""
    return (T * means.transpose(-1, -2)).sum((-3, -2, -1))


def kept_energy(sub: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """(G,) the energy the mean-merged group keeps, m ||mean_h T_h a_h||^2 summed over tokens, for
    sub (G, m, m, d, d) (group_blocks) and T (G, m, d, d), one transform per member."""
    return _kept(T, _means(sub, T))


def align_groups(sub: torch.Tensor, planes: Planes, iters: int = 20, tol: float = 1e-5) -> torch.Tensor:
    """Generalised Procrustes of G equal groups of m heads at once; returns T (G, m, d, d), each
    group's first member's T = I. sub: (G, m, m, d, d) (group_blocks).

    Per group: start by aligning every member onto the first; then repeatedly align each member onto
    the mean of the aligned group (the residual sum_h ||T_h a_h - mean||^2 never increases) until the
    share of energy the mean keeps grows by less than `tol`; a group that has converged keeps its
    transforms while the others go on. The common frame of a group is free; it is fixed so that the
    first member does not move.
    """
    m = sub.shape[1]
    energy = torch.diagonal(sub, dim1=-2, dim2=-1).sum(-1).diagonal(dim1=-2, dim2=-1).sum(-1)  # (G,)
    T = best_transform(sub[:, :, 0], planes)  # align each a_h onto a_first: maximise tr(T sub[g, h, 0])
    means = _means(sub, T)
    kept = _kept(T, means)
    active = torch.ones_like(kept, dtype=torch.bool)
    for _ in range(iters if m > 2 else 0):  # two heads: aligning one onto the other is already optimal
        T_new = best_transform(means, planes)
        means_new = _means(sub, T_new)
        kept_new = _kept(T_new, means_new)
        a = active[:, None, None, None]
        T, means = torch.where(a, T_new, T), torch.where(a, means_new, means)
        kept, prev = torch.where(active, kept_new, kept), kept
        active = active & (kept_new - prev > tol * energy)
        if not bool(active.any()):
            break
    return T[:, :1].transpose(-1, -2) @ T  # regauge: T_h <- T_first^T T_h (allowed transforms form a group)
