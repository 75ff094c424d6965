"""Two changes to how a transformers model computes, entered around the eval's forwards; neither
changes what it computes (beyond the rounding of another one-token attention kernel).

- **Grouped one-token attention.** A grouped-query model decoding one token under transformers'
  SDPA with a mask (the eval's batches are left-padded, so always) copies every layer's cached
  K/V heads `n_rep` times per step (`repeat_kv`) in transformers 5.17 (5.24 packs the query heads
  instead). On SmolLM2-135M (9 query / 3 K/V heads), 2,048 rows, an H200, that copy was 64 of an
  eager decode's 296 ms of kernels and made the attention read 3x the cache. Inside `fast_forward`
  the one-token step is `models.decode_attention`'s: on a GPU its "gqa" kernel (SDPA's own grouped
  heads, with the mask), elsewhere "packed" (the n_rep query heads of a group attend as n_rep query
  rows of their K/V head: what 5.24's own SDPA path computes); prefill and multi-token passes keep
  transformers' SDPA path. Only a model whose attention is "sdpa" and has grouped heads is switched,
  and it is switched back on leaving. On SmolLM2's longest WikidataQA batch both kernels gave the
  stock tokens on all 2,048 rows (bf16, H200).
- **One position per row for the rotary embeddings.** transformers 5.17's rotary embeddings compute
  `inv_freq x position_ids` as a float32 batched matmul with an inner size of 1, (B, d/2, 1) @ (B, 1, T):
  cuBLAS took 19-20 ms for one 2,048 x 32 prefill on an H200 (the 135M model's whole loss pass is
  ~145 ms), and as (1, d/2, 1) @ (1, 1, B*T) just as long (the first try, bench/results/fast_paths_h200/).
  The decode steps' (B, d/2, 1) @ (B, 1, 1) took microseconds. So inside `fast_forward` each rotary
  module (any module with an `inv_freq` buffer of its own) is called on the positions as (B*T, 1), one
  position per row, and its (B*T, 1, d) outputs are viewed back as (B, T, d). With an inner size of 1
  every element is a single float32 product either way, so cos and sin are bit-identical
  (tests/eval/test_fast_paths.py, also on a GPU); 5.24 multiplies elementwise, any layout.

`fast_forward(model)` is re-entrant (an inner entry on the same model does nothing).
"""

from __future__ import annotations

import weakref
from contextlib import ExitStack, contextmanager

import torch

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
    """The one-token kernel for the device the model's first parameter is on."""
    param = next(model.parameters(), None)
    return KERNELS.get(param.device.type, KERNEL) if param is not None else KERNEL


@contextmanager
def grouped_decode_attention(model):
    """The model's attention is the packed one-token kernel inside, when it was "sdpa" with grouped heads."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before != "sdpa" or not hasattr(model, "set_attn_implementation") or not grouped(model):
        yield
        return
    model.set_attn_implementation(decode_attention.register(kernel_for(model)))
    try:
        yield
    finally:
        model.set_attn_implementation(before)


class _FlatPositions:
    """Forward pre-hook and hook of one rotary module: positions (B, T) in as (B*T, 1), outputs
    (B*T, 1, ...) back as (B, T, ...)."""

    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None

    def before(self, module, args, kwargs):
        in_kwargs = "position_ids" in kwargs
        pos = kwargs["position_ids"] if in_kwargs else (args[1] if len(args) > 1 else None)
        self.shape = None
        if not isinstance(pos, torch.Tensor) or pos.ndim != 2 or pos.shape[1] == 1:
            return None  # one column already, or a layout this does not know (multimodal 3-row positions)
        self.shape = (pos.shape[0], pos.shape[1])
        flat = pos.reshape(-1, 1)  # (B*T, 1)
        if in_kwargs:
            return args, {**kwargs, "position_ids": flat}
        return (args[0], flat, *args[2:]), kwargs

    def after(self, module, args, kwargs, output):
        if self.shape is None:
            return None
        rows, width = self.shape
        self.shape = None
        outs = output if isinstance(output, tuple) else (output,)
        if not all(isinstance(o, torch.Tensor) and o.shape[:2] == (rows * width, 1) for o in outs):
            raise RuntimeError(
                f"{type(module).__name__}: a rotary embedding whose output is not (positions, 1, ...) "
                "for flat positions; tensorllm's fast_forward cannot apply to it"
            )
        shaped = tuple(o.reshape(rows, width, *o.shape[2:]) for o in outs)  # (B, T, ...)
        return shaped if isinstance(output, tuple) else shaped[0]


def rotary_modules(model) -> list[torch.nn.Module]:
    """The model's rotary-embedding modules: those holding an `inv_freq` buffer of their own (Gemma-3:
    one per layer type, `sliding_attention_inv_freq`, ...)."""
    own = lambda m: (n for n, _ in m.named_buffers(recurse=False))  # noqa: E731
    return [m for m in model.modules() if any(n.endswith("inv_freq") for n in own(m))]


@contextmanager
def flat_rotary_positions(model):
    """Every rotary module of the model is called on its positions as one position per row inside."""
    handles = []
    try:
        for module in rotary_modules(model):
            flat = _FlatPositions()
            handles.append(module.register_forward_pre_hook(flat.before, with_kwargs=True))
            handles.append(module.register_forward_hook(flat.after, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def fast_forward(model):
    """Both changes (module docstring) around the model's forwards; re-entrant per model."""
    if model in _ENTERED:
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(grouped_decode_attention(model))
        stack.enter_context(flat_rotary_positions(model))
        _ENTERED.add(model)
        stack.callback(_ENTERED.discard, model)
        yield
