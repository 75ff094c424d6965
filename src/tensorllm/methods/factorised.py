"""What factors a step keeps for a factorised checkpoint (`tensorllm compress ... --format factorised`).

A transform keeps its factors only when its `RunContext` asks (`ctx.scratch[KEY]` is a list, which
`tensorllm.compress(..., factors=[...])` sets); it still writes the dense rebuild into the model, so
both formats share one code path and the factorised model can be checked against the dense one.

- multi-head Tucker (methods/tucker.py): U1 (D, R1), U2 (d, R2) and one core per canonical block.
  The cores come out of Tucker's own `from_tensor` applied to `core x_3 U3` (modes 1-2 reduced to R1,
  R2), so whatever head order Tucker's tensor uses, block n of the result is the core of the n-th
  query head / K head / V head / output head of the canonical layout (attention.py). Stored folded
  per block (`blocks`: (2g+2) Hkv R1 R2 values) or as the core with U3 and each block's (slot, group)
  (`core`: R1 R2 R3 Hkv + S R3), whichever is smaller; runtime/factorised_modules.py runs both.
- LASER (methods/laser.py): W ~= left (out, k) @ right (k, in), left = U_k S_k, right = V_k^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensorllm.attention import AttnWeights
from tensorllm.base.errors import UserError
from tensorllm.base.layers import parse_layers
from tensorllm.methods.tucker_tensor import from_tensor
from tensorllm.tensor.multilinear import mode_dot
from tensorllm.tensor.svd import svd_factors
from tensorllm.tensor.tucker import TuckerResult

KEY = "factors"  # RunContext.scratch key: a list the transforms append their kept factors to


@dataclass
class KeptTucker:
    """One layer's multi-head Tucker factors, in the canonical block order (float64 or float32)."""

    layer: int
    u1: torch.Tensor  # (D, R1)
    u2: torch.Tensor  # (d, R2)
    qkv: torch.Tensor  # ((H+2Hkv) R2, R1): rows n*R2..(n+1)*R2 = C_n^T for q heads, k heads, v heads
    o: torch.Tensor  # (R1, H R2): columns i*R2..(i+1)*R2 = C_i of output head i
    core: torch.Tensor  # (R1, R2, R3, Hkv) Tucker's core
    u3: torch.Tensor  # (S, R3), S = 2g+2 block slots
    slots: list[tuple[int, int]]  # (slot, group) of each canonical block: q heads, k, v, o heads
    heads: int
    kv_heads: int
    ranks: tuple[int, int, int]

    @property
    def form(self) -> str:
        """`core` when the core with U3 is smaller than the cores folded per block."""
        return "core" if self.core.numel() + self.u3.numel() < self.qkv.numel() + self.o.numel() else "blocks"

    def tensors(self) -> dict[str, torch.Tensor]:
        """The factors stored, by parameter name of runtime's `TuckerAttention`."""
        rest = {"core": self.core, "u3": self.u3} if self.form == "core" else {"qkv": self.qkv, "o": self.o}
        return {"u1": self.u1, "u2": self.u2, **rest}


@dataclass
class KeptLowRank:
    layer: int
    path: str  # module path relative to the block
    left: torch.Tensor  # (out, k) = U_k S_k
    right: torch.Tensor  # (k, in) = V_k^T

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"left": self.left, "right": self.right}


def requested(ctx) -> list | None:
    return ctx.scratch.get(KEY)


def _fake(w: AttnWeights, rows: int, cols: int) -> AttnWeights:
    """Canonical weights of the same head layout with head_dim `rows` and hidden `cols` (zeros)."""
    H, Hkv = w.heads, w.kv_heads
    z = torch.zeros
    return AttnWeights(
        z(H * rows, cols),
        z(Hkv * rows, cols),
        z(Hkv * rows, cols),
        z(cols, H * rows),
        None,
        None,
        None,
        None,
        H,
        Hkv,
        rows,
    )


def block_slots(w: AttnWeights, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(slot, group) in Tucker's (D, d, S, Hkv) tensor of every canonical block (q heads, k, v, o heads),
    read off Tucker's own `from_tensor` applied to a tensor of slot numbers."""
    S, G = shape[2], shape[3]
    idx = torch.arange(S * G, dtype=torch.float64).reshape(1, 1, S, G)  # value s*G + g at (s, g)
    small = from_tensor(idx, _fake(w, 1, 1), "multihead")  # q (H, 1), k, v (Hkv, 1), o (1, H)
    codes = torch.cat([small.q[:, 0], small.k[:, 0], small.v[:, 0], small.o[0]]).round().long()
    return [(int(c) // G, int(c) % G) for c in codes]


def tucker_factors(layer: int, res: TuckerResult, w: AttnWeights) -> KeptTucker:
    """A multi-head Tucker result (modes 0, 1, 2 of Tucker's (D, d, S, Hkv) tensor) as kept factors."""
    if tuple(res.modes) != (0, 1, 2) or res.core.ndim != 4:
        raise ValueError(
            "factorised checkpoints keep the multi-head Tucker (modes 0, 1, 2 of a 4-way tensor)"
        )
    u1, u2, u3 = res.factors
    R1, R2, R3 = res.ranks
    small = from_tensor(mode_dot(res.core, u3, 2), _fake(w, R2, R1), "multihead")  # head_dim R2, hidden R1
    return KeptTucker(
        layer,
        u1,
        u2,
        torch.cat([small.q, small.k, small.v]),
        small.o,
        res.core,
        u3,
        block_slots(w, res.shape),
        w.heads,
        w.kv_heads,
        (R1, R2, R3),
    )


def tucker_keeper(ctx, layer: int):
    """A callable (TuckerResult, canonical weights) -> None that keeps one layer's factors, or None when
    the context does not ask for factors."""
    kept = requested(ctx)
    if kept is None:
        return None
    return lambda res, w: kept.append(tucker_factors(layer, res, w))


def keep_lowrank(
    ctx, layer: int, path: str, w: torch.Tensor, rank: int, cfg, conv1d: bool, factors=None
) -> None:
    """Keep the factors of LASER's rank-`rank` approximation of `w` (as stored; a Conv1D stores (in, out),
    kept as the linear map (out, in)). `svd_factors` with LASER's options: `left @ right` is exactly the
    approximation LASER wrote (it runs the SVD a second time, only when factors are asked for).
    `factors` (left (out, k), right (k, in)) of the linear map, when the step computed them itself."""
    kept = requested(ctx)
    if kept is None:
        return
    if factors is not None:
        left, right = factors
    else:
        left, right = svd_factors(w, rank, method=cfg.svd, seed=cfg.seed)  # (m, k), (k, n)
        if conv1d:  # stored W = left @ right is (in, out); the linear map is W^T = right^T @ left^T
            left, right = right.T, left.T
    kept.append(KeptLowRank(layer, path, left.contiguous(), right.contiguous()))


# ---------------------------------------------------------------- what can be kept


def check_tucker(cfg, arch=None) -> None:
    if cfg.variant != "multihead":
        raise UserError(f"--format factorised keeps the multi-head Tucker only, not variant '{cfg.variant}'")
    if arch is not None and (arch.qkv != "separate" or arch.conv1d):
        raise UserError(
            f"--format factorised needs separate q/k/v Linear projections; {arch.name} fuses them "
            "(use --format dense)"
        )


def check_laser(cfg, arch=None) -> None:
    if arch is not None:
        own, _ = arch.resolve_matrix(cfg.matrix or arch.ffn_input or "")
        if arch.expert_matrix(own) is not None or (arch.qkv != "separate" and own == "qkv"):
            raise UserError(f"--format factorised cannot keep LASER factors of {own} on {arch.name}")


def check_steps(steps, methods, arch=None, n_layers: int | None = None) -> None:
    """Refuse a recipe whose steps cannot all keep their factors, or whose steps touch one module twice
    (a later step would rewrite weights an earlier one keeps factorised). `methods[i]` is step i's
    Method; arch / n_layers, when known, allow the checks that need the model."""
    owner: dict[tuple[int, str], int] = {}
    for n, (step, method) in enumerate(zip(steps, methods), start=1):
        method.check_factorised(step.config, arch)
        if arch is None or n_layers is None:
            continue
        touched = method.touched_modules(arch, step.to_dict())
        for layer in parse_layers(step.config.layers, n_layers):
            for path in touched:
                first = owner.setdefault((layer, path), n)
                if first != n:
                    raise UserError(
                        f"--format factorised: step {n} ({step.method}) changes {path} of layer {layer}, "
                        f"which step {first} keeps factorised"
                    )
