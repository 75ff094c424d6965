"""Two changes to how a transformers model computes, entered around the eval's forwards; neither
changes what it computes (beyond the rounding of other kernels for the same sums).

- **Grouped one-token attention.** A grouped-query model decoding one token under transformers'
  SDPA with a mask (the eval's batches are left-padded, so always) copies every layer's cached
  K/V heads `n_rep` times per step (`repeat_kv`) in transformers 5.17 (5.24 packs the query heads
  instead). On SmolLM2-135M (9 query / 3 K/V heads), 2,048 rows, an H200, that copy was 64 of an
  eager decode's 296 ms of kernels and made the attention read 3x the cache. Inside `fast_forward`
  the one-token step is `models.decode_attention`'s: on a GPU its "gqa" kernel (SDPA's own grouped
  heads, with the mask), elsewhere "packed" (the n_rep query heads of a group attend as n_rep query
  rows of their K/V head: what 5.24's own SDPA path computes); prefill and multi-token passes keep
  transformers' SDPA path. Only a model whose attention is "sdpa" (every sub-config too) and has
  grouped heads is switched, and it is switched back on leaving. On SmolLM2's longest WikidataQA
  batch both kernels gave the stock tokens on all 2,048 rows (bf16, H200).
- **A contiguous input for the output head.** With `logits_to_keep` transformers slices the last
  hidden states, `lm_head(hidden[:, -k:, :])`, and a linear layer on that strided (B, k, d) view runs
  as a batched matmul: for the 2,048 x 32 prefill (k = 1) and loss pass (k = 7) on an H200, one
  18.7-19.0 ms cuBLAS kernel, ~13% of the loss pass. (It was first taken for the rotary embedding's
  float32 matmul, the profile's other `bmm`; reshaping the rotary positions did not move it, and the
  rotary call itself takes ~60 us: bench/results/fast_paths_h200/.) Inside `fast_forward` the output
  head's input is made contiguous, so the layer is one (B*k, d) @ (d, V) matmul (the decode steps'
  input, (B, 1, d), is contiguous already).

`fast_forward(model)` is re-entrant (an inner entry on the same model does nothing). It is not
thread-safe: two threads evaluating one model at once would restore it under each other.
"""

from __future__ import annotations

import weakref
from contextlib import ExitStack, contextmanager

import torch

from tensorllm.base.devices import input_device
from tensorllm.models import decode_attention

# decode_attention's kernel for the one-token step, per device type. H200, SmolLM2 at 2,048 rows x 32 columns,
# one decode-step graph replay: transformers 5.17's SDPA 18.15 ms, "packed" 10.12 ms, "gqa" 7.65 ms
# (bench/results/fast_paths_h200/). Elsewhere "packed", which is what transformers 5.24's own SDPA computes.
KERNELS = {"cuda": "gqa"}
KERNEL = "packed"
_ENTERED: weakref.WeakSet = weakref.WeakSet()  # models inside fast_forward now


def grouped(model) -> bool:
    """Whether any attention module of the model has fewer K/V heads than query heads."""
    return any(getattr(m, "num_key_value_groups", 1) > 1 for m in model.modules())


def kernel_for(model) -> str:
    """The one-token kernel for the device the model's inputs go to."""
    return KERNELS.get(input_device(model).type, KERNEL)


def attention_implementations(config) -> dict[str, str | None]:
    """The attention implementation of the config ("") and of each of its sub-configs (a multimodal
    model's `text_config`, `vision_config`, ...)."""
    out = {"": getattr(config, "_attn_implementation", None)}
    for name in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            out[name] = sub._attn_implementation
    return out


@contextmanager
def grouped_decode_attention(model):
    """The model's one-token steps run `kernel_for(model)`'s decode attention inside, when its config
    and every sub-config use "sdpa" and it has grouped heads; it is "sdpa" everywhere again after.
    (`set_attn_implementation` sets every sub-config, so a model mixing implementations is left alone.)"""
    config = getattr(model, "config", None)
    if (
        config is None
        or set(attention_implementations(config).values()) != {"sdpa"}
        or not hasattr(model, "set_attn_implementation")
        or not grouped(model)
    ):
        yield
        return
    model.set_attn_implementation(decode_attention.register(kernel_for(model)))
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def _contiguous_input(module, args):
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


@contextmanager
def contiguous_output_head(model):
    """The model's output head (`get_output_embeddings()`) gets a contiguous input inside."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module):
        yield
        return
    handle = head.register_forward_pre_hook(_contiguous_input)
    try:
        yield
    finally:
        handle.remove()


def inside(model) -> bool:
    """Whether the model is inside `fast_forward` now (CUDA-graph captures are kept apart by it)."""
    return model in _ENTERED


@contextmanager
def fast_forward(model):
    """Both changes (module docstring) around the model's forwards; re-entrant per model."""
    if inside(model):
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(grouped_decode_attention(model))
        stack.enter_context(contiguous_output_head(model))
        _ENTERED.add(model)
        stack.callback(_ENTERED.discard, model)
        yield
