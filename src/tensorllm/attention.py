"""Read and write one layer's attention weights in a canonical per-head layout.

Canonical layout (`nn.Linear`, `(out, in)`), whatever the checkpoint stores:
    q: (H*d, D)   k: (Hkv*d, D)   v: (Hkv*d, D)   o: (D, H*d)
    bq: (H*d,)    bk, bv: (Hkv*d,)   bo: (D,)      (each None when the model has no bias)
    qn: (H*d,)    kn: (Hkv*d,)                      q/k norm weights (None without q/k norms)
Query head i uses K/V head i // (H // Hkv), as in Hugging Face's `repeat_kv`.
The q/k norm weights are held per head like biases, whatever the checkpoint stores: a per-head norm's
one shared (d,) weight is repeated for every head (and written back as one weight, which requires every
head's copy to be equal); a norm over the whole projection holds (H*d,) / (Hkv*d,) as it is.
Only `ArchSpec` data decides how fused projections are cut and where norms live (see archs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from tensorllm.archs import ArchSpec, blocks, find_module, get_module, head_layout, text_config


@dataclass
class AttnWeights:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    bq: torch.Tensor | None
    bk: torch.Tensor | None
    bv: torch.Tensor | None
    bo: torch.Tensor | None
    heads: int
    kv_heads: int
    head_dim: int
    qn: torch.Tensor | None = None  # (H*d,) query norm weight per head (raw parameter values)
    kn: torch.Tensor | None = None  # (Hkv*d,) key norm weight per head

    @property
    def hidden(self) -> int:
        return self.q.shape[1]

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def num_params(self) -> int:
        return sum(t.numel() for t in (self.q, self.k, self.v, self.o))

    def with_(self, **kw) -> AttnWeights:
        return replace(self, **kw)


def _weight(mod: nn.Module, conv1d: bool) -> torch.Tensor:
    w = mod.weight.detach()
    return w.t() if conv1d else w  # Conv1D stores (in, out)


def _bias(mod: nn.Module) -> torch.Tensor | None:
    b = getattr(mod, "bias", None)
    return None if b is None else b.detach()


def read_attention(model: nn.Module, spec: ArchSpec, layer: int) -> AttnWeights:
    D, H, Hkv, d = head_layout(model.config)
    block = blocks(model, spec)[layer]
    o_mod = get_module(block, spec.o)
    if spec.qkv == "separate":
        mods = [get_module(block, p) for p in (spec.q, spec.k, spec.v)]
        q, k, v = (_weight(m, spec.conv1d) for m in mods)
        bq, bk, bv = (_bias(m) for m in mods)
    else:
        fused = get_module(block, spec.fused)
        w, b = _weight(fused, spec.conv1d), _bias(fused)
        q, k, v = _split_fused(w, spec, H, Hkv, d)
        bq, bk, bv = _split_fused(b, spec, H, Hkv, d) if b is not None else (None, None, None)
    qn = _read_norm(block, spec.q_norm, spec, H, d)
    kn = _read_norm(block, spec.k_norm, spec, Hkv, d)
    return AttnWeights(q, k, v, _weight(o_mod, spec.conv1d), bq, bk, bv, _bias(o_mod), H, Hkv, d, qn, kn)


def _read_norm(block: nn.Module, path: str | None, spec: ArchSpec, heads: int, d: int) -> torch.Tensor | None:
    mod = find_module(block, path)
    if mod is None or getattr(mod, "weight", None) is None:
        return None
    w = mod.weight.detach()
    size = d if spec.qk_norm_span == "head" else heads * d
    if w.shape != (size,):
        raise ValueError(f"{path}.weight has shape {tuple(w.shape)}, {spec.name} expects ({size},)")
    return w.repeat(heads) if spec.qk_norm_span == "head" else w  # (heads*d,)


def _write_norm(
    block: nn.Module, path: str | None, spec: ArchSpec, value: torch.Tensor | None, d: int
) -> None:
    """Write a per-head norm weight back in the checkpoint's layout; untouched when it is unchanged (so a
    write of the weights read never bumps a norm's version counter)."""
    mod = find_module(block, path)
    if value is None or mod is None:
        return
    if spec.qk_norm_span == "head":
        rows = value.reshape(-1, d)  # (heads, d)
        if not bool((rows == rows[:1]).all()):
            raise ValueError(f"{spec.name} holds one {path} weight for every head; the heads' copies differ")
        value = rows[0]
    if value.shape == mod.weight.shape and torch.equal(value.to(mod.weight), mod.weight.detach()):
        return
    _assign(mod, "weight", value)


def _split_fused(t: torch.Tensor, spec: ArchSpec, H: int, Hkv: int, d: int):
    """Cut a fused qkv weight (rows = outputs) or bias into q, k, v."""
    if spec.qkv == "fused_concat":  # [Q (H*d) ; K (Hkv*d) ; V (Hkv*d)] along the output
        return torch.split(t, [H * d, Hkv * d, Hkv * d], dim=0)
    if spec.qkv == "fused_grouped":  # Falcon's new decoder: per K/V group [its r query heads ; K ; V]
        r = H // Hkv
        per = t.reshape(Hkv, r + 2, d, *t.shape[1:])  # (Hkv, r+2, d[, D])
        return (
            per[:, :r].reshape(H * d, *t.shape[1:]),
            per[:, r].reshape(Hkv * d, *t.shape[1:]),
            per[:, r + 1].reshape(Hkv * d, *t.shape[1:]),
        )
    # fused_per_head (GPT-NeoX): outputs ordered head-major, then [q, k, v], then d
    per = t.reshape(H, 3, d, *t.shape[1:])  # (H, 3, d[, D])
    return tuple(per[:, j].reshape(H * d, *t.shape[1:]) for j in range(3))  # each (H*d[, D])


def _join_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: ArchSpec, H: int, d: int):
    if spec.qkv == "fused_concat":
        return torch.cat([q, k, v], dim=0)
    rest = q.shape[1:]
    if spec.qkv == "fused_grouped":
        n = k.shape[0] // d
        parts = [q.reshape(n, H // n, d, *rest), k.reshape(n, 1, d, *rest), v.reshape(n, 1, d, *rest)]
        grouped = torch.cat(parts, dim=1)  # (Hkv, r+2, d[, D])
        return grouped.reshape(-1, *rest)
    stacked = torch.stack([t.reshape(H, d, *rest) for t in (q, k, v)], dim=1)  # (H, 3, d[, D])
    return stacked.reshape(H * 3 * d, *rest)


def _assign(mod: nn.Module, name: str, value: torch.Tensor | None, conv1d: bool = False) -> None:
    """Write `value` (canonical orientation) into parameter `name` of `mod`, keeping its dtype/device.

    Shapes may change (GQA conversion); then the parameter is replaced and the Linear's
    feature counts follow.
    """
    if value is None:
        return
    param = getattr(mod, name)
    if name == "weight" and conv1d:
        value = value.t()
    value = value.to(dtype=param.dtype, device=param.device)
    if value.shape == param.shape:
        with torch.no_grad():
            param.copy_(value)
        return
    setattr(mod, name, nn.Parameter(value.contiguous(), requires_grad=param.requires_grad))
    if isinstance(mod, nn.Linear) and name == "weight":
        mod.out_features, mod.in_features = value.shape


def write_attention(model: nn.Module, spec: ArchSpec, layer: int, w: AttnWeights) -> None:
    """Write canonical weights back into layer `layer` in the checkpoint's own layout and dtype."""
    block = blocks(model, spec)[layer]
    o_mod = get_module(block, spec.o)
    _assign(o_mod, "weight", w.o, spec.conv1d)
    _assign(o_mod, "bias", w.bo)
    if spec.qkv == "separate":
        for path, wt, b in ((spec.q, w.q, w.bq), (spec.k, w.k, w.bk), (spec.v, w.v, w.bv)):
            mod = get_module(block, path)
            _assign(mod, "weight", wt, spec.conv1d)
            _assign(mod, "bias", b)
    else:
        if w.kv_heads != text_config(model.config).num_attention_heads and spec.qkv == "fused_per_head":
            raise ValueError("fused per-head qkv cannot hold fewer K/V heads than query heads")
        fused = get_module(block, spec.fused)
        _assign(fused, "weight", _join_fused(w.q, w.k, w.v, spec, w.heads, w.head_dim), spec.conv1d)
        if w.bq is not None:
            _assign(fused, "bias", _join_fused(w.bq, w.bk, w.bv, spec, w.heads, w.head_dim))
    _write_norm(block, spec.q_norm, spec, w.qn, w.head_dim)
    _write_norm(block, spec.k_norm, spec, w.kn, w.head_dim)


def set_kv_heads(model: nn.Module, spec: ArchSpec, kv_heads: int) -> None:
    """Record a new K/V head count in the config and every attention module (after writing weights)."""
    if not spec.supports_gqa:
        raise ValueError(f"{spec.name} cannot express grouped-query attention")
    config = text_config(model.config)
    setattr(config, spec.kv_heads_key, kv_heads)
    heads = config.num_attention_heads
    for block in blocks(model, spec):
        attn = get_module(block, spec.o.rsplit(".", 1)[0])
        if hasattr(attn, spec.kv_groups_attr):
            setattr(attn, spec.kv_groups_attr, heads // kv_heads)
        if hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = kv_heads


def per_head_blocks(w: AttnWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head blocks in the paper's row-vector orientation, each (heads, D, d).

    Q block of head i = q[i*d:(i+1)*d, :].T; O^T block = o[:, i*d:(i+1)*d].
    """
    D, d = w.hidden, w.head_dim
    q = w.q.reshape(w.heads, d, D).transpose(1, 2)  # (H, D, d)
    k = w.k.reshape(w.kv_heads, d, D).transpose(1, 2)  # (Hkv, D, d)
    v = w.v.reshape(w.kv_heads, d, D).transpose(1, 2)  # (Hkv, D, d)
    o = w.o.reshape(D, w.heads, d).permute(1, 0, 2)  # (H, D, d)
    return q, k, v, o


def from_head_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor):
    """Inverse of `per_head_blocks`: canonical (q, k, v, o) matrices."""
    H, D, d = q.shape
    return (
        q.transpose(1, 2).reshape(H * d, D),  # (H*d, D)
        k.transpose(1, 2).reshape(k.shape[0] * d, D),  # (Hkv*d, D)
        v.transpose(1, 2).reshape(v.shape[0] * d, D),  # (Hkv*d, D)
        o.permute(1, 0, 2).reshape(D, H * d),  # (D, H*d)
    )


def qk_norm_note(model: nn.Module, spec: ArchSpec) -> str | None:
    """Which norms sit after the q/k projections (for reports), or None."""
    block = blocks(model, spec)[0]
    mods = [find_module(block, p) for p in (spec.q_norm, spec.k_norm)]
    if not any(m is not None for m in mods):
        return None
    kind = {"rms": "RMSNorm", "layer": "LayerNorm"}[spec.qk_norm_kind]
    span = (
        "over each head, one (head_dim,) weight shared by all heads"
        if spec.qk_norm_span == "head"
        else "over the whole projection"
    )
    scale = f", scale ({spec.norm_offset:g} + weight)" if spec.norm_offset else ""
    return f"{kind} of queries and keys after the projection, before RoPE, {span}{scale}"
