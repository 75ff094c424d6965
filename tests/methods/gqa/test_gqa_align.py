"""Pure alignment math: allowed transforms commute with transformers' own RoPE, and are optimal."""

import math

import pytest
import torch

from tensorllm.methods.gqa import align as A

D = 16


def _rope_half(x, pos, theta=10000.0):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos[:, None].double() * inv[None]  # (T, D/2)
    emb = torch.cat([ang, ang], dim=-1)[None]  # (1, T, D)
    q, _ = apply_rotary_pos_emb(x, x, emb.cos(), emb.sin())
    return q


def _rope_half_partial(x, pos, rotary_dim, theta=10000.0):
    """GPT-NeoX's runtime: rotate_half on the first rotary_dim dimensions only."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    inv = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    ang = pos[:, None].double() * inv[None]  # (T, r/2)
    emb = torch.cat([ang, ang], dim=-1)[None]  # (1, T, r)
    q, _ = apply_rotary_pos_emb(x, x, emb.cos(), emb.sin())
    return q


def _rope_interleaved(x, pos, rotary_dim):
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb, create_sinusoidal_positions

    table = create_sinusoidal_positions(64, rotary_dim).double()[pos][None]  # (1, T, rotary_dim)
    sin, cos = torch.split(table, table.shape[-1] // 2, dim=-1)  # each (1, T, r/2)
    x = x.transpose(1, 2)  # GPT-J: (B, T, heads, d)
    rot = apply_rotary_pos_emb(x[..., :rotary_dim], sin, cos)
    return torch.cat([rot, x[..., rotary_dim:]], dim=-1).transpose(1, 2)


@pytest.mark.parametrize(
    "pairing,rdims", [("half", D), ("half", 8), ("interleaved", D), ("interleaved", 8), (None, 0)]
)
def test_allowed_transforms_commute_with_the_runtime_rope(pairing, rdims):
    gen = torch.Generator().manual_seed(1)
    planes = A.Planes.for_rope(D, rdims, pairing)
    T = A.best_transform(torch.randn(D, D, generator=gen, dtype=torch.float64), planes)
    assert torch.allclose(T @ T.T, torch.eye(D, dtype=torch.float64), atol=1e-12)
    q, k = torch.randn(2, 1, 1, 20, D, generator=gen, dtype=torch.float64)  # (B, heads, T, d)
    pos = torch.arange(20)

    def rope(x):
        if pairing == "half":
            return _rope_half(x, pos) if rdims == D else _rope_half_partial(x, pos, rdims)
        if pairing == "interleaved":
            return _rope_interleaved(x, pos, rdims)
        return x

    scores = rope(q) @ rope(k).transpose(-1, -2)
    q2, k2 = q @ T.T, k @ T.T  # each head vector x -> T x
    assert not torch.allclose(q2, q)
    assert torch.allclose(rope(q2) @ rope(k2).transpose(-1, -2), scores, atol=1e-10)


def test_a_reflection_in_a_plane_does_not_commute():
    """Why the key transforms must be rotations (det +1) in each RoPE plane."""
    gen = torch.Generator().manual_seed(2)
    F = torch.eye(D, dtype=torch.float64)
    F[0, 0], F[D // 2, D // 2] = 1.0, -1.0  # reflection inside the half-split plane (0, 8)
    q, k = torch.randn(2, 1, 1, 20, D, generator=gen, dtype=torch.float64)
    pos = torch.arange(20)
    before = _rope_half(q, pos) @ _rope_half(k, pos).transpose(-1, -2)
    after = _rope_half(q @ F.T, pos) @ _rope_half(k @ F.T, pos).transpose(-1, -2)
    assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize(
    "planes",
    [A.Planes.for_rope(D, D, "half"), A.Planes.for_rope(D, 8, "interleaved"), A.Planes.orthogonal(D)],
)
def test_best_transform_is_optimal(planes):
    gen = torch.Generator().manual_seed(3)
    M = torch.randn(D, D, generator=gen, dtype=torch.float64)
    T = A.best_transform(M, planes)
    best = float(torch.trace(T @ M))
    assert best == pytest.approx(float(A.best_score(M, planes)), rel=1e-10)
    for _ in range(200):  # no other allowed transform does better
        other = A.best_transform(torch.randn(D, D, generator=gen, dtype=torch.float64), planes)
        assert float(torch.trace(other @ M)) <= best + 1e-9
    if planes.pairs.numel():  # each plane block is a rotation, not a reflection
        idx = planes.pairs[0]
        block = T[idx[:, None], idx]  # (2, 2)
        assert float(torch.linalg.det(block)) == pytest.approx(1.0)


def test_single_plane_angle_matches_a_grid_search():
    planes = A.Planes.for_rope(2, 2, "half")
    M = torch.tensor([[0.3, -1.2], [0.4, 0.9]], dtype=torch.float64)
    T = A.best_transform(M, planes)
    grid = max(
        math.cos(t) * 1.2 + math.sin(t) * (-1.6) for t in torch.linspace(-math.pi, math.pi, 20001).tolist()
    )
    assert float(torch.trace(T @ M)) == pytest.approx(grid, abs=1e-6)


def _planted(n, planes, noise, seed=4, tokens=400):
    """Heads that are allowed rotations of one head (plus noise): cross products and the rotations."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, D, generator=gen, dtype=torch.float64) * torch.linspace(
        3, 0.5, D, dtype=torch.float64
    )
    R = A.best_transform(torch.randn(n, D, D, generator=gen, dtype=torch.float64), planes)
    acts = [
        base @ R[h].T + noise * torch.randn(tokens, D, generator=gen, dtype=torch.float64) for h in range(n)
    ]
    X = torch.cat(acts, dim=1)  # (tokens, n*d)
    return A.cross_blocks(X.T @ X, n, D), R, acts


@pytest.mark.parametrize("planes", [A.Planes.for_rope(D, D, "half"), A.Planes.orthogonal(D)])
def test_similarity_and_group_alignment_undo_planted_rotations(planes):
    blocks, R, acts = _planted(3, planes, noise=0.0)
    S = A.similarity(blocks, planes)
    assert torch.allclose(
        S + torch.eye(3, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64), atol=1e-10
    )
    assert float(A.similarity(blocks, None)[0, 1]) < 0.9  # unaligned they look different
    T = A.align_groups(A.group_blocks(blocks, [[0, 1, 2]]), planes)[0]
    assert torch.allclose(T[0], torch.eye(D, dtype=torch.float64), atol=1e-12)  # first member is the frame
    for h in range(3):
        assert torch.allclose(acts[h] @ T[h].T, acts[0], atol=1e-8)


def test_group_alignment_reduces_the_residual_with_noise():
    planes = A.Planes.for_rope(D, D, "half")
    blocks, _, acts = _planted(4, planes, noise=0.5)
    sub = A.group_blocks(blocks, [[0, 1, 2, 3]])
    T = A.align_groups(sub, planes)[0]
    eye = torch.eye(D, dtype=torch.float64).expand(4, D, D)
    energy = sum(float((a**2).sum()) for a in acts)
    aligned_kept = float(A.kept_energy(sub, T[None])) / energy
    plain_kept = float(A.kept_energy(sub, eye[None])) / energy
    assert aligned_kept > 0.8 > plain_kept
    mean = sum(a @ t.T for a, t in zip(acts, T)) / 4  # kept_energy agrees with the activations
    assert 4 * float((mean**2).sum()) / energy == pytest.approx(aligned_kept, rel=1e-9)


def _conditioned(batch, k, cond, gen):
    """Random (batch, k, k) matrices with singular values spread log-uniformly over [1/cond, 1]."""
    U = torch.linalg.qr(torch.randn(batch, k, k, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(batch, k, k, generator=gen, dtype=torch.float64))[0]
    s = torch.logspace(0, -math.log10(cond), k, dtype=torch.float64)
    return U @ torch.diag_embed(s.expand(batch, k)) @ V.transpose(-1, -2)


@pytest.mark.parametrize("cond", [1.0, 1e3, 1e8])
def test_newton_schulz_procrustes_equals_the_svd_one(cond):
    gen = torch.Generator().manual_seed(11)
    M = _conditioned(6, 24, cond, gen) * 37.0
    T_svd = A.procrustes(M, method="svd")
    T_ns = A.procrustes(M, method="newton_schulz")
    eye = torch.eye(24, dtype=torch.float64)
    assert torch.allclose(T_ns.transpose(-1, -2) @ T_ns, eye.expand(6, 24, 24), atol=1e-12)
    assert torch.allclose(T_ns, T_svd, atol=1e-6 * max(1.0, cond**0.5))  # unique: M is full rank
    nuclear = torch.linalg.svdvals(M).sum(-1)
    assert torch.allclose((T_ns * M.transpose(-1, -2)).sum((-2, -1)), nuclear, rtol=1e-12)


def test_newton_schulz_falls_back_to_the_svd_on_a_singular_matrix():
    gen = torch.Generator().manual_seed(12)
    M = torch.randn(3, 10, 10, generator=gen, dtype=torch.float64)
    M[1, :, 4] = 0  # rank 9: a zero singular value never grows under the iteration
    _, ok = A._newton_schulz(M.transpose(-1, -2), max_iters=128, tol=1e-12)
    assert ok.tolist() == [True, False, True]
    T = A.procrustes(M, method="newton_schulz")
    eye = torch.eye(10, dtype=torch.float64)
    assert torch.allclose(T.transpose(-1, -2) @ T, eye.expand(3, 10, 10), atol=1e-12)
    nuclear = torch.linalg.svdvals(M).sum(-1)
    assert torch.allclose((T * M.transpose(-1, -2)).sum((-2, -1)), nuclear, rtol=1e-12)


def _align_one_group_at_a_time(blocks, groups, planes, iters=20, tol=1e-5):
    """Reference: the generalised Procrustes of each group alone, written out per member."""
    out = []
    for members in groups:
        sub = blocks[torch.tensor(members)[:, None], torch.tensor(members)]  # (m, m, d, d)
        m = len(members)
        energy = float(sum(torch.trace(sub[h, h]) for h in range(m)))

        def kept_of(T):
            return float(sum(torch.trace(T[h] @ sub[h, j] @ T[j].T) for h in range(m) for j in range(m))) / m

        T = A.best_transform(sub[:, 0], planes)
        kept = kept_of(T)
        for _ in range(iters if m > 2 else 0):
            means = torch.stack([sum(sub[h, j] @ T[j].T for j in range(m)) / m for h in range(m)])
            T = A.best_transform(means, planes)
            prev, kept = kept, kept_of(T)
            if kept - prev <= tol * energy:
                break
        out.append(T[0].T @ T)
    return torch.stack(out)


@pytest.mark.parametrize("planes", [A.Planes.for_rope(D, D, "half"), A.Planes.orthogonal(D)])
def test_aligning_every_group_at_once_equals_one_group_at_a_time(planes):
    blocks, _, _ = _planted(12, planes, noise=0.7, seed=9)
    groups = [[0, 5, 7, 11], [1, 2, 3, 4], [6, 8, 9, 10]]
    together = A.align_groups(A.group_blocks(blocks, groups), planes, iters=20, tol=1e-5)
    alone = _align_one_group_at_a_time(blocks, groups, planes)
    assert torch.allclose(together, alone, atol=1e-10)
    few = A.align_groups(A.group_blocks(blocks, groups), planes, iters=1)  # stopped early: still gauged
    assert torch.allclose(few[:, 0], torch.eye(D, dtype=torch.float64).expand(3, D, D), atol=1e-12)
