"""Attention projections and linear maps computed from their factors, never from dense weights.

This file is SELF-CONTAINED (it imports only torch and transformers): tensorllm copies it verbatim
beside every factorised checkpoint as `modeling_tensorllm.py`, with two lines naming the model's
classes, so plain transformers loads the checkpoint with `trust_remote_code=True` and no tensorllm.

A multi-head Tucker layer (TensorLLM, arXiv 2501.15674) keeps U1 (D, R1) and U2 (d, R2), shared by
every head and block, and one small core C_n (R1, R2) per canonical block n (each query head, each
K/V head, each output head): block n in the paper's orientation (D, d) is U1 C_n U2^T. The runtime:
    z = x U1                                    (..., R1)          once for Q, K and V
    y = z [C_n ...]                             (..., (H+2Hkv) R2) one product for every block
    q|k|v = y.view(..., H+2Hkv, R2) U2^T        (..., (H+2Hkv) d)  U2 shared by all heads
    out = ((a.view(..., H, d) U2) [C_n^T ...]) U1^T     (..., D)
The cores are stored either folded per block (`form: blocks`: `qkv` ((H+2Hkv) R2, R1), `o`
(R1, H R2)) or as the Tucker core (R1, R2, R3, Hkv) with U3 (S, R3) (`form: core`), whichever is
smaller; a `core` layer folds U3 in once, on its first forward (again after its factors change).
A LASER matrix W (out, in) ~= left (out, k) @ right (k, in) runs as two thin products.

`install(model, spec)` swaps the modules the spec names for these; the model's own attention
(RoPE, caches, masks, SDPA, grouped heads, generate) is untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPEC_KEY = "tensorllm_factorised"  # the config.json entry that lists the factorised modules
FORMAT_VERSION = 1
PARTS = ("q", "k", "v", "o")


def _empty(*shape, like: torch.Tensor | None):
    kw = {} if like is None else {"dtype": like.dtype, "device": like.device}
    return nn.Parameter(torch.empty(*shape, **kw))


class TuckerAttention(nn.Module):
    """The factors of one layer's attention (see the module docstring); holds no dense weight."""

    def __init__(self, entry: dict, like: torch.Tensor | None = None):
        super().__init__()
        D, H, Hkv, d = entry["hidden"], entry["heads"], entry["kv_heads"], entry["head_dim"]
        R1, R2, R3 = entry["ranks"]
        self.hidden, self.heads, self.kv_heads, self.head_dim = D, H, Hkv, d
        self.r1, self.r2, self.form = R1, R2, entry["form"]
        self.u1 = _empty(D, R1, like=like)
        self.u2 = _empty(d, R2, like=like)
        if self.form == "blocks":
            self.qkv = _empty((H + 2 * Hkv) * R2, R1, like=like)
            self.o = _empty(R1, H * R2, like=like)
        elif self.form == "core":
            slots = entry["slots"]  # (slot, group) of each canonical block: q heads, k, v, o heads
            self.core = _empty(R1, R2, R3, Hkv, like=like)
            self.u3 = _empty(entry["slot_count"], R3, like=like)
            self.slots = [(int(s), int(g)) for s, g in slots]  # plain ints: loaders re-create buffers empty
            self._folded = None
        else:
            raise ValueError(f"unknown factorised form '{self.form}'")
        self._pending: tuple | None = None  # (input, {part: output}) until q, k and v have taken theirs

    def cores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(qkv ((H+2Hkv) R2, R1), o (R1, H R2)): the cores folded per block."""
        if self.form == "blocks":
            return self.qkv, self.o
        key = (
            self.core._version,
            self.u3._version,
            self.core.data_ptr(),
            self.u3.data_ptr(),
            self.core.dtype,
        )
        if self._folded is not None and self._folded[0] == key and not torch.is_grad_enabled():
            return self._folded[1], self._folded[2]
        slot, group = (torch.tensor(c, device=self.core.device) for c in zip(*self.slots))
        n_qkv = self.heads + 2 * self.kv_heads
        c = torch.einsum("abrn,nr->nba", self.core[:, :, :, group], self.u3[slot])  # (n, R2, R1): C_n^T
        qkv = c[:n_qkv].reshape(n_qkv * self.r2, self.r1)  # ((H+2Hkv) R2, R1)
        o = c[n_qkv:].permute(2, 0, 1).reshape(self.r1, self.heads * self.r2)  # (R1, H R2)
        if not torch.is_grad_enabled():  # while training the factors, fold on every call
            self._folded = (key, qkv, o)
        return qkv, o

    def project(self, x: torch.Tensor, part: str) -> torch.Tensor:
        """q (..., H d), k or v (..., Hkv d) of `x` (..., D); q, k and v of one input share one pass."""
        pending = self._pending
        if pending is None or pending[0] is not x or part not in pending[1]:
            qkv, _ = self.cores()
            z = x @ self.u1  # (..., R1)
            y = F.linear(z, qkv)  # (..., (H+2Hkv) R2)
            y = (y.unflatten(-1, (-1, self.r2)) @ self.u2.T).flatten(-2)  # (..., (H+2Hkv) d)
            sizes = [self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2
            pending = (x, dict(zip(("q", "k", "v"), y.split(sizes, dim=-1))))
        out = pending[1].pop(part)
        self._pending = pending if pending[1] else None
        return out

    def output(self, a: torch.Tensor) -> torch.Tensor:
        """The output projection of the heads' outputs `a` (..., H d) -> (..., D)."""
        _, o = self.cores()
        b = (a.unflatten(-1, (self.heads, self.head_dim)) @ self.u2).flatten(-2)  # (..., H R2)
        return F.linear(F.linear(b, o), self.u1)  # (..., R1) -> (..., D)

    @torch.no_grad()
    def dense(self) -> dict[str, torch.Tensor]:
        """The canonical dense weights q (H d, D), k, v (Hkv d, D), o (D, H d) (for export only)."""
        qkv, o = self.cores()
        n = self.heads + 2 * self.kv_heads
        w = self.u2 @ qkv.view(n, self.r2, self.r1) @ self.u1.T  # (n, d, D)
        w = w.reshape(n * self.head_dim, self.hidden)
        q, k, v = w.split([self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2)
        ov = torch.einsum("ar,rhs,ds->ahd", self.u1, o.view(self.r1, self.heads, self.r2), self.u2)
        return {"q": q, "k": k, "v": v, "o": ov.reshape(self.hidden, self.heads * self.head_dim)}


class FactorProjection(nn.Module):
    """q_proj / k_proj / v_proj / o_proj of a Tucker layer: its owner's factors plus its own bias."""

    def __init__(self, owner: TuckerAttention, part: str, bias: bool, like: torch.Tensor | None = None):
        super().__init__()
        self.__dict__["owner"] = owner  # not a submodule: the factors are saved once, under the owner
        self.part = part
        size = (
            owner.hidden if part == "o" else (owner.heads if part == "q" else owner.kv_heads) * owner.head_dim
        )
        self.in_features = owner.heads * owner.head_dim if part == "o" else owner.hidden
        self.out_features = size
        self.bias = _empty(size, like=like) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.owner.output(x) if self.part == "o" else self.owner.project(x, self.part)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.part}: {self.in_features} -> {self.out_features}, from factors"


class LowRankLinear(nn.Module):
    """y = (x right^T) left^T + bias: a rank-k linear map kept as its two SVD factors."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, like=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.right = _empty(rank, in_features, like=like)  # V_k^T
        self.left = _empty(out_features, rank, like=like)  # U_k S_k
        self.bias = _empty(out_features, like=like) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.right), self.left, self.bias)

    @torch.no_grad()
    def dense(self) -> torch.Tensor:
        return self.left @ self.right  # (out, in)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, rank {self.rank}"


def _like(module: nn.Module) -> torch.Tensor | None:
    return next(iter(module.parameters()), None)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def install(model: nn.Module, spec: dict) -> None:
    """Replace the modules `spec` names by factorised ones (parameters uninitialised; load them after)."""
    if spec.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"factorised format version {spec.get('version')!r} (this code reads {FORMAT_VERSION})"
        )
    for entry in spec["modules"]:
        if entry["kind"] == "tucker":
            old = {p: model.get_submodule(entry[p]) for p in PARTS}
            like = _like(old["q"])
            owner = TuckerAttention(entry, like)
            _replace(model, entry["path"], owner)
            for p in PARTS:
                has_bias = getattr(old[p], "bias", None) is not None
                _replace(model, entry[p], FactorProjection(owner, p, has_bias, like))
        elif entry["kind"] == "lowrank":
            old = model.get_submodule(entry["path"])
            has_bias = getattr(old, "bias", None) is not None
            mod = LowRankLinear(entry["in"], entry["out"], entry["rank"], has_bias, _like(old))
            _replace(model, entry["path"], mod)
        else:
            raise ValueError(f"unknown factorised module kind '{entry['kind']}'")


def factorised_classes(base_config: type, base_model: type) -> tuple[type, type]:
    """(config class, model class) of a factorised checkpoint whose dense model is `base_model`."""

    class TensorLLMConfig(base_config):
        model_type = f"tensorllm_{base_config.model_type}"

    class TensorLLMForCausalLM(base_model):
        config_class = TensorLLMConfig

        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            install(self, getattr(config, SPEC_KEY))

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            """The base class's loader, refusing a checkpoint that lacks a factor or holds it mis-shaped."""
            want_info = kwargs.pop("output_loading_info", False)
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
            bad = [*info.get("missing_keys", ()), *(str(m[0]) for m in info.get("mismatched_keys", ()))]
            if bad:
                raise ValueError(
                    f"factorised checkpoint: missing or mis-shaped weights: {', '.join(sorted(bad))}"
                )
            return (model, info) if want_info else model

    TensorLLMForCausalLM.__name__ = TensorLLMForCausalLM.__qualname__ = "TensorLLMForCausalLM"
    return TensorLLMConfig, TensorLLMForCausalLM
