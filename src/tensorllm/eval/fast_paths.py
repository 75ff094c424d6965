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
- **Rotary embeddings from one row of positions.** transformers 5.17's rotary embeddings compute
  `inv_freq x position_ids` as a float32 batched matmul with an inner size of 1, (B, d/2, 1) @ (B, 1, T):
  cuBLAS took 19 ms for one 2,048 x 32 prefill on an H200 (~9 ns per output element; the 135M model's
  whole loss pass is ~145 ms). Laid out as (1, d/2, 1) @ (1, 1, B*T) or (B*T, d/2, 1) @ (B*T, 1, 1) it
  took as long (bench/results/fast_paths_h200/). So inside `fast_forward` each rotary module (any
  module with an `inv_freq` buffer of its own) runs a multi-token call on the single row 0..T-1,
  (1, d/2, 1) @ (1, 1, T), and its cos and sin are gathered at the batch's positions: an element for
  position p is the same single float32 product and the same cos / sin either way, so the outputs are
  bit-identical (tests/eval/test_fast_paths.py, also on a GPU). A rotary module's output depends only
  on the positions (for the dynamic types also on the largest one, which is T-1 both ways); one-token
  decode steps are left as they are.

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


class _PositionTable:
    """Forward pre-hook and hook of one rotary module, for a call on T > 1 positions (B, T): the module
    runs on the one row 0..T-1 instead, (1, T), and each output (1, T, ...) is gathered back as
    (B, T, ...) at the batch's positions. Inside `fast_forward` every multi-token forward is a
    left-padded batch from `decoder.left_pad` with an empty cache, whose positions count each row's
    real tokens and so lie in 0..T-1 (a position outside would fail the gather loudly)."""

    def __init__(self) -> None:
        self.pos: torch.Tensor | None = None

    def before(self, module, args, kwargs):
        in_kwargs = "position_ids" in kwargs
        pos = kwargs["position_ids"] if in_kwargs else (args[1] if len(args) > 1 else None)
        self.pos = None
        if not isinstance(pos, torch.Tensor) or pos.ndim != 2 or pos.shape[1] == 1:
            return None  # a decode step (cheap as it is), or a layout this does not know (3-row positions)
        self.pos = pos
        row = torch.arange(pos.shape[1], device=pos.device, dtype=pos.dtype)[None, :]  # (1, T)
        if in_kwargs:
            return args, {**kwargs, "position_ids": row}
        return (args[0], row, *args[2:]), kwargs

    def after(self, module, args, kwargs, output):
        if self.pos is None:
            return None
        pos, self.pos = self.pos, None
        outs = output if isinstance(output, tuple) else (output,)
        if not all(isinstance(o, torch.Tensor) and o.shape[:2] == (1, pos.shape[1]) for o in outs):
            raise RuntimeError(
                f"{type(module).__name__}: a rotary embedding whose output is not (1, positions, ...) "
                "for one row of positions; tensorllm's fast_forward cannot apply to it"
            )
        gathered = tuple(o[0][pos] for o in outs)  # (T, ...) rows picked per position -> (B, T, ...)
        return gathered if isinstance(output, tuple) else gathered[0]


def rotary_modules(model) -> list[torch.nn.Module]:
    """The model's rotary-embedding modules: those holding an `inv_freq` buffer of their own (Gemma-3:
    one per layer type, `sliding_attention_inv_freq`, ...)."""
    own = lambda m: (n for n, _ in m.named_buffers(recurse=False))  # noqa: E731
    return [m for m in model.modules() if any(n.endswith("inv_freq") for n in own(m))]


@contextmanager
def rotary_position_tables(model):
    """Every rotary module of the model computes one row of positions and gathers from it, inside."""
    handles = []
    try:
        for module in rotary_modules(model):
            table = _PositionTable()
            handles.append(module.register_forward_pre_hook(table.before, with_kwargs=True))
            handles.append(module.register_forward_hook(table.after, with_kwargs=True))
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
        stack.enter_context(rotary_position_tables(model))
        _ENTERED.add(model)
        stack.callback(_ENTERED.discard, model)
        yield
