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
        score = score + torch.linalg.svdvals(M[..., f[:, None], f]).sum(-1)  # nuclear norm
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
        U, _, Vh = torch.linalg.svd(M[..., f[:, None], f])
        T[..., f[:, None], f] = Vh.transpose(-1, -2) @ U.transpose(-1, -2)  # V U^T
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


def merged_energy(blocks: torch.Tensor, members: list[int], T: torch.Tensor) -> torch.Tensor:
    """||mean_h T_h a_h||^2 summed over tokens, for one group (T: (m, d, d), one per member)."""
    idx = torch.tensor(members, device=blocks.device)
    sub = blocks[idx[:, None], idx]  # (m, m, d, d)
    m = len(members)
    # sum_{h,j} tr(T_h C_hj T_j^T) / m^2
    TC = torch.einsum("hab,hjbc->hjac", T, sub)  # (m, m, d, d): T_h C_hj
    return (TC * T.unsqueeze(0)).sum() / (m * m)


def align_group(
    blocks: torch.Tensor, members: list[int], planes: Planes, iters: int = 20, tol: float = 1e-5
) -> torch.Tensor:
    """Generalised Procrustes of one group of heads; returns T (m, d, d), first member's T = I.

    Start by aligning every member onto the first; then repeatedly align each member onto the
    mean of the aligned group (the residual sum_h ||T_h a_h - mean||^2 never increases) until the
    share of energy the mean keeps grows by less than `tol`. The group's common frame is free; it
    is fixed so that the first member does not move.
    """
    idx = torch.tensor(members, device=blocks.device)
    sub = blocks[idx[:, None], idx]  # (m, m, d, d): sub[h, j] = sum_t a_h a_j^T
    m = len(members)
    energy = float(torch.diagonal(sub, dim1=-2, dim2=-1).sum(-1).diagonal().sum())
    T = best_transform(sub[:, 0], planes)  # align each a_h onto a_first: maximise tr(T sub[h, 0])
    kept = m * float(merged_energy(blocks, members, T))
    for _ in range(iters if m > 2 else 0):  # two heads: aligning one onto the other is already optimal
        # M_h = sum_t a_h mean^T = (1/m) sum_j sub[h, j] T_j^T
        T = best_transform(torch.einsum("hjab,jcb->hac", sub, T) / m, planes)
        prev, kept = kept, m * float(merged_energy(blocks, members, T))
        if kept - prev <= tol * energy:
            break
    return T[0].T.unsqueeze(0) @ T  # regauge: T_h <- T_first^T T_h (allowed transforms form a group)
