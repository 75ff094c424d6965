"""Decode attention that reads each K/V head once, for transformers' attention registry.

Decoding one token, a grouped-query layer has H query heads but only Hkv = H / n_rep K/V heads.
Compiled with a static cache (always masked), transformers' SDPA path repeats every K/V head n_rep
times (`repeat_kv`) before attending (transformers 5.17 also uncompiled), so each step reads and
writes n_rep copies of the cache: on a 7B shape with 8 K/V heads that decoded slower than the
32-head original (0.54-0.59x, H200, 2026-11-30, BENCHMARKS.md). Two kernels for the one-token step
(prefill, several query tokens, and plain multi-head layers take transformers' own SDPA path):
- "gqa" (default): `scaled_dot_product_attention(..., enable_gqa=True)` with the mask: SDPA's own
  grouped heads. One 7B layer, batch 16, 4k cache: 0.108 ms (2.56 TB/s) on an H200;
- "packed": a group's n_rep query heads become n_rep query rows of their K/V head,
  (B, H, 1, d) -> (B, Hkv, n_rep, d), one plain SDPA call (for a torch whose grouped SDPA is slow
  with a mask): 0.139 ms (2.0 TB/s) on the same layer (`bench/attn_decode_micro.py`).
In a host-sync-free compiled decode loop (`measure.decode_loop_ms`) the 8-head model decodes
1.94x ("gqa") and 1.70x ("packed") faster than the 32-head original.

    from tensorllm.models.decode_attention import register
    model.set_attn_implementation(register())   # then a static cache + torch.compile
needs torch >= 2.5 (`enable_gqa`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# kernel -> registered name. No "sdpa" in it: transformers would then refuse it for a model whose own SDPA
# path it refuses (Gemma-2: soft-capping), whose soft-capped layers `softcapped_attention` computes here.
NAMES = {"gqa": "tensorllm_gqa_decode", "packed": "tensorllm_packed_decode"}


def softcapped_attention(query, key, value, mask, scaling, softcap):
    """Attention with logit soft-capping (Gemma-2: scores <- softcap * tanh(scores / softcap)), which SDPA
    has not: query (B, H, q, d), key/value (B, Hkv, L, d) -> (B, q, H, dv). `mask`: sdpa_mask's boolean
    (True = attend), an additive float mask, or None (plain causal, left to is_causal by sdpa_mask)."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)  # (B, H, L, d)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.tanh(query @ key.transpose(-1, -2) * scale / softcap) * softcap  # (B, H, q, L)
    q_len, length = scores.shape[-2:]
    if mask is None:
        mask = torch.ones(q_len, length, dtype=torch.bool, device=scores.device).tril(length - q_len)
    if mask.dtype == torch.bool:  # a finite fill: a fully masked (padding) row stays finite, as in eager
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask[..., :length]
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), None


def decode_attention(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    kernel: str = "gqa",
    **kwargs,
):
    """query (B, H, q, d), key/value (B, Hkv, L, d) -> ((B, q, H, dv), None), as transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n_rep = getattr(module, "num_key_value_groups", 1)
    B, H, q_len, d = query.shape
    if kwargs.get("softcap") is not None and not dropout:
        return softcapped_attention(query, key, value, attention_mask, scaling, kwargs["softcap"])
    if q_len != 1 or n_rep == 1 or kwargs.get("position_bias") is not None or dropout:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    if kernel == "gqa":  # query head h = g * n_rep + r reads K/V head g, as in transformers' repeat_kv
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True
        )  # (B, H, 1, dv)
        return out.transpose(1, 2), None  # (B, 1, H, dv)
    packed = query.reshape(B, H // n_rep, n_rep, d)  # (B, Hkv, n_rep, d): the group's heads as query rows
    mask = attention_mask  # (B, 1, 1, L) broadcasts over rows; a per-head mask (B, H, 1, L) is regrouped
    if mask is not None and mask.shape[1] != 1:
        mask = mask.reshape(mask.shape[0], H // n_rep, n_rep, mask.shape[-1])  # (B, Hkv, n_rep, L)
    out = F.scaled_dot_product_attention(
        packed, key, value, attn_mask=mask, scale=scaling
    )  # (B, Hkv, n_rep, dv)
    return out.reshape(B, 1, H, value.shape[-1]), None  # (B, 1, H, dv)


def register(kernel: str = "gqa") -> str:
    """Register the decode attention with `kernel` "gqa" or "packed" (and transformers' SDPA mask for
    it) in transformers; returns the name to pass to `set_attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if kernel not in NAMES:
        raise ValueError(f"kernel must be one of {', '.join(NAMES)}, got {kernel!r}")
    AttentionInterface.register(NAMES[kernel], functools.partial(decode_attention, kernel=kernel))
    AttentionMaskInterface.register(NAMES[kernel], sdpa_mask)
    return NAMES[kernel]
