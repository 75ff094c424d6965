"""Decode attention that reads each K/V head once, for transformers' attention registry.

Decoding one token, a grouped-query layer has H query heads but only Hkv = H / n_rep K/V heads.
transformers' SDPA path under torch.compile (a static cache always passes a mask) repeats every
K/V head n_rep times (`repeat_kv`) before attending, so each step reads and writes n_rep copies of
the cache: on a 7B shape with 8 K/V heads it decoded slower than the 32-head original (2026-11-30,
BENCHMARKS.md). Here a group's n_rep query heads become n_rep query rows of their K/V head
(B, H, 1, d) -> (B, Hkv, n_rep, d), so one SDPA call reads the cache once; a mask shared by all
heads broadcasts over the rows. Prefill (several query tokens) and plain multi-head layers take
transformers' own SDPA path.

Two kernels for the packed step:
- "sdpa": one `scaled_dot_product_attention` call. Its kernels spread work over batch x heads x
  query blocks only, so with B x Hkv = 128 (7B shape, batch 16, 8 K/V heads) about one block per SM
  streams a whole 4k cache: 11.45 ms/step measured on an H200 vs a ~4.6 ms bandwidth floor.
- "split": the same attention as matrix products with the cache cut into `splits` chunks for the
  value product (flash-decoding's split-K: one softmax over the whole row, then the chunks' partial
  sums added in float32), so the work spreads over B x Hkv x splits blocks. Its scores are rounded
  to the model's dtype before the softmax (SDPA keeps them in float32): exact in float32, slightly
  less exact than SDPA in bfloat16. Experimental: timed by bench/gqa_decode.py, not yet on a GPU.

    from tensorllm.methods.gqa.packed_attention import register
    model.set_attn_implementation(register())   # then generate(..., cache_implementation="static")
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NAME = "tensorllm_packed_sdpa"
SPLIT_NAME = "tensorllm_packed_split"
NATIVE_NAME = "tensorllm_gqa_sdpa"
SPLITS = 16  # chunks of the cache for the split kernel (the positions past a multiple of 16 come after)


def _split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """q (B, G, R, d), k (B, G, L, d), v (B, G, L, dv), mask broadcastable to (B, G, R, L), bool (True =
    attend) or additive -> (B, G, R, dv): softmax(q k^T * scale + mask) v, with v's product split over L."""
    B, G, R, _ = q.shape
    L, dv = k.shape[2], v.shape[-1]
    # q is scaled first (no overflow in float16); the product comes back in the model's dtype, so the
    # scores are rounded to it before the float32 softmax: in bfloat16 a little less exact than SDPA,
    # which keeps them in float32 (a float32 copy of the cache would cost the traffic this saves)
    scores = torch.matmul(q * scale, k.transpose(-1, -2)).float()  # (B, G, R, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    p = torch.softmax(scores, dim=-1).to(v.dtype)  # (B, G, R, L)
    splits = min(SPLITS, L)
    main = L // splits * splits  # the first `main` positions in `splits` equal chunks, the rest after
    chunk = main // splits
    pm = p[..., :main].reshape(B, G, R, splits, chunk).transpose(2, 3)  # (B, G, S, R, L/S)
    vm = v[:, :, :main].reshape(B, G, splits, chunk, dv)  # (B, G, S, L/S, dv)
    out = torch.matmul(pm, vm).float().sum(2)  # (B, G, S, R, dv) -> (B, G, R, dv)
    if main < L:  # fewer than `splits` positions left over
        out = out + torch.matmul(p[..., main:], v[:, :, main:]).float()  # (B, G, R, dv)
    return out.to(v.dtype)


def packed_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, split: bool = False, native: bool = False, **kwargs):
    """query (B, H, q, d), key/value (B, Hkv, L, d) -> ((B, q, H, d), None), as transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n_rep = getattr(module, "num_key_value_groups", 1)
    B, H, q_len, d = query.shape
    if q_len != 1 or (n_rep == 1 and not (split or native)) or kwargs.get("position_bias") is not None or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # query head h = g * n_rep + r reads K/V head g (transformers' repeat_kv order)
    packed = query.reshape(B, H // n_rep, n_rep, d)  # (B, Hkv, n_rep, d): the group's heads as query rows
    mask = attention_mask  # (B, 1, 1, L) broadcasts over rows; a per-head mask (B, H, 1, L) is regrouped
    if mask is not None and mask.shape[1] != 1:
        mask = mask.reshape(mask.shape[0], H // n_rep, n_rep, mask.shape[-1])  # (B, Hkv, n_rep, L)
    if native:  # SDPA's own grouped heads: query (B, H, 1, d) against the Hkv heads, mask (B, 1|H, 1, L)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                             enable_gqa=True)  # (B, H, 1, dv)
        return out.transpose(1, 2), None  # (B, 1, H, dv)
    if split:
        out = _split_attention(packed, key, value, mask, d ** -0.5 if scaling is None else scaling)
    else:
        out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(B, 1, H, value.shape[-1]), None  # (B, Hkv, n_rep, dv) -> (B, 1, H, dv)


def register(kernel: str = "sdpa") -> str:
    """Register the packed attention with `kernel` "sdpa" or "split" (and transformers' SDPA mask for
    it) in transformers; returns the name to pass to `set_attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    names = {"sdpa": NAME, "split": SPLIT_NAME, "gqa": NATIVE_NAME}
    if kernel not in names:
        raise ValueError(f"kernel must be one of {', '.join(names)}, got {kernel!r}")
    name = names[kernel]
    AttentionInterface.register(name, functools.partial(packed_attention, split=kernel == "split",
                                                        native=kernel == "gqa"))
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
