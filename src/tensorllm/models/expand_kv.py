"""Grouped-query -> equivalent multi-head attention: repeat each K/V head for its query heads.

Hugging Face's `repeat_kv` makes query head i read K/V head i // g (g = H / Hkv); writing those
copies as real K/V heads gives a multi-head checkpoint with exactly the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from tensorllm.archs import ArchSpec, blocks, text_config
from tensorllm.attention import read_attention, set_kv_heads, write_attention
from tensorllm.base.errors import UserError


def repeat_heads(t: torch.Tensor | None, kv_heads: int, group: int) -> torch.Tensor | None:
    """(Hkv*d[, D]) -> (Hkv*group*d[, D]), each head's rows repeated `group` times in place."""
    if t is None:
        return None
    rest = t.shape[1:]
    per = t.reshape(kv_heads, 1, -1, *rest)  # (Hkv, 1, d[, D])
    return per.expand(kv_heads, group, *per.shape[2:]).reshape(-1, *rest)  # (Hkv*g*d[, D])


def expand_kv(model: nn.Module, arch: ArchSpec) -> int:
    """Turn every layer into multi-head attention in place; return the old K/V head count."""
    if not arch.supports_gqa:
        raise UserError(f"{arch.name} checkpoints have no separate K/V head count to expand")
    config = text_config(model.config)
    heads = config.num_attention_heads
    kv = getattr(config, arch.kv_heads_key, None) or heads
    if kv == heads:
        raise UserError(f"the model is already multi-head ({heads} K/V heads for {heads} query heads)")
    g = heads // kv
    for i in range(len(blocks(model, arch))):
        w = read_attention(model, arch, i)
        write_attention(
            model,
            arch,
            i,
            w.with_(
                k=repeat_heads(w.k, kv, g),
                v=repeat_heads(w.v, kv, g),
                bk=repeat_heads(w.bk, kv, g),
                bv=repeat_heads(w.bv, kv, g),
                kn=repeat_heads(w.kn, kv, g),  # a key norm over the whole projection grows with it
                kv_heads=heads,
            ),
        )
    set_kv_heads(model, arch, heads)
    return kv
