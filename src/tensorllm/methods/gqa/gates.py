"""The gated K/V of the recovery fine-tune (methods/gqa/finetune.py): hard-concrete gates (Louizos et
al. 2018) and the wrapper that mixes each K/V head's own output with its group's shared one; installed on
every layer's k_proj / v_proj for the fine-tune and removed, as plain GQA projections, after it."""

from __future__ import annotations

import math

import torch
from torch import nn

from tensorllm.archs import blocks, get_module
from tensorllm.attention import read_attention, set_kv_heads, write_attention


class HardConcreteGates(nn.Module):
    """n stochastic gates in [0, 1], exactly 0 or 1 with positive probability."""

    def __init__(
        self, n: int, init: float = 3.0, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1
    ):
        super().__init__()
        self.init = float(init)
        self.log_alpha = nn.Parameter(torch.full((n,), self.init))
        self.beta, self.gamma, self.zeta = beta, gamma, zeta
        self.z: torch.Tensor | None = None  # the gate values the wrapped projections read
        self.closed = False  # every z is exactly 0: the projections skip their own heads

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(self.log_alpha.shape, generator=generator, dtype=torch.float64)
        u = u.clamp(1e-6, 1 - 1e-6).to(self.log_alpha)
        s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / self.beta)
        self.z = (s * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)
        self.closed = False
        return self.z

    def fix(self, value: float) -> None:
        """Set every gate to `value` (1: own K/V, 0: shared) instead of sampling."""
        self.z = torch.full_like(self.log_alpha, float(value)).detach()
        self.closed = float(value) == 0.0

    FLOOR = -10.0  # P(open) = 2e-4: closed

    @torch.no_grad()
    def clamp_(self, target: float) -> None:
        """Keep log-alpha under a ceiling that falls from its start value to FLOOR as the target share
        of closed gates rises 0 -> 1. Gates only ever hand over (an open gate's penalty gradient
        vanishes, so one pushed far open could stay stuck), and all are closed when the warm-up ends,
        whichever gates the Lagrangian chose to close first."""
        self.log_alpha.clamp_(self.FLOOR, self.init - (self.init - self.FLOOR) * target)

    @torch.no_grad()
    def bound_(self) -> None:
        """l0_schedule lagrangian: no falling ceiling, log-alpha only stays at or under its start value. An
        open gate's penalty gradient vanishes (P(open) saturates), so one the KL pushes further open is
        never closed by the Lagrangian (measured on a tiny model: without this bound 2 of 8 gates were
        still open after 150 steps at a target of 1, the multipliers growing; with it all closed by 80)."""
        self.log_alpha.clamp_(max=self.init)

    def prob_open(self) -> torch.Tensor:
        """P(z > 0) per gate (the expected L0 norm)."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))


class GatedKV(nn.Module):
    """K or V projection whose n heads mix their own output with their group's shared head."""

    def __init__(
        self,
        own: nn.Linear,
        shared_w: torch.Tensor,
        shared_b: torch.Tensor | None,
        gates: HardConcreteGates,
        head_dim: int,
    ):
        super().__init__()
        self.own = own.requires_grad_(False)
        D = own.in_features
        self.shared = nn.Linear(
            D, shared_w.shape[0], bias=shared_b is not None, device=own.weight.device, dtype=own.weight.dtype
        )
        with torch.no_grad():
            self.shared.weight.copy_(shared_w)
            if shared_b is not None:
                self.shared.bias.copy_(shared_b)
        self.gates = gates
        self.d = head_dim
        self.n = own.out_features // head_dim
        self.groups = shared_w.shape[0] // head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        shared = self.shared(x).unflatten(-1, (self.groups, 1, self.d))  # (..., G, 1, d)
        shared = shared.expand(*lead, self.groups, self.n // self.groups, self.d).reshape(
            *lead, self.n, self.d
        )
        if self.gates.closed:  # z = 0: exactly the shared heads (own heads would be multiplied by 0)
            return shared.flatten(-2)  # (..., n*d)
        own = self.own(x).unflatten(-1, (self.n, self.d))  # (..., n, d)
        z = self.gates.z.to(own.dtype)[:, None]  # (n, 1)
        return (z * own + (1 - z) * shared).flatten(-2)  # (..., n*d)


def _parent(block: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, name = path.rpartition(".")
    return (get_module(block, head) if head else block), name


def install(model, arch, shared, head_dim, n_heads) -> list[HardConcreteGates]:
    gates = []
    for block, (kw, kb, vw, vb) in zip(blocks(model, arch), shared):
        g = HardConcreteGates(n_heads).to(next(model.parameters()).device)
        for path, w, b in ((arch.k, kw, kb), (arch.v, vw, vb)):
            parent, name = _parent(block, path)
            setattr(parent, name, GatedKV(getattr(parent, name), w, b, g, head_dim))
        gates.append(g)
    return gates


def uninstall_as_gqa(model, arch, groups: int) -> None:
    """Put plain Linear K/V back holding the shared heads, and record `groups` K/V heads."""
    shared = []
    for block in blocks(model, arch):
        entry = []
        for path in (arch.k, arch.v):
            parent, name = _parent(block, path)
            wrapper = getattr(parent, name)
            bias = wrapper.shared.bias
            entry.append((wrapper.shared.weight.detach(), None if bias is None else bias.detach()))
            setattr(parent, name, wrapper.own)
        shared.append(entry)
    for i, ((kw, kb), (vw, vb)) in enumerate(shared):
        w = read_attention(model, arch, i)
        write_attention(model, arch, i, w.with_(k=kw, bk=kb, v=vw, bv=vb, kv_heads=groups))
    set_kv_heads(model, arch, groups)
