"""Decode attention that reads each K/V head once, for transformers' attention registry.

Decoding one token, a grouped-query layer has H query heads but only Hkv = H / n_rep K/V heads.
transformers' SDPA path under torch.compile (a static cache always passes a mask) repeats every
K/V head n_rep times (`repeat_kv`) before attending, so each step reads and writes n_rep copies of
the cache: on a 7B shape with 8 K/V heads it decoded slower than the 32-head original (2026-11-30,
BENCHMARKS.md). Here a group's n_rep query heads become n_rep query rows of their K/V head
(B, H, 1, d) -> (B, Hkv, n_rep, d), so one SDPA call reads the cache once; a mask shared by all
heads broadcasts over the rows. Prefill (several query tokens) and plain multi-head layers take
transformers' own SDPA path.

    from tensorllm.methods.gqa.packed_attention import register
    model.set_attn_implementation(register())   # then generate(..., cache_implementation="static")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "tensorllm_packed_sdpa"


def packed_sdpa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs):
    """query (B, H, q, d), key/value (B, Hkv, L, d) -> ((B, q, H, d), None), as transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n_rep = getattr(module, "num_key_value_groups", 1)
    B, H, q_len, d = query.shape
    if q_len != 1 or n_rep == 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # query head h = g * n_rep + r reads K/V head g (transformers' repeat_kv order)
    packed = query.reshape(B, H // n_rep, n_rep, d)  # (B, Hkv, n_rep, d): the group's heads as query rows
    mask = attention_mask  # (B, 1, 1, L) broadcasts over rows; a per-head mask (B, H, 1, L) is regrouped
    if mask is not None and mask.shape[1] != 1:
        mask = mask.reshape(mask.shape[0], H // n_rep, n_rep, mask.shape[-1])  # (B, Hkv, n_rep, L)
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(B, 1, H, value.shape[-1]), None  # (B, Hkv, n_rep, dv) -> (B, 1, H, dv)


def register() -> str:
    """Register the attention (and transformers' SDPA mask for it) under NAME; returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
