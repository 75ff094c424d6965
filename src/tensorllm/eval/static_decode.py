"""Greedy decoding of one left-padded batch into a preallocated (static) KV cache, without a host
synchronisation per step.

`decoder.greedy_generate`'s plain loop grows a DynamicCache (every layer's keys and values are
concatenated each step), concatenates the attention mask and reads `done.all()` back to the host
after every token, so on a GPU each step waits for the previous one and for Python. Here:

- the cache is transformers' `StaticCache`, `prompt width + max_new_tokens` columns, written in
  place; the attention mask has that full width from the start (0 in the columns not written yet,
  set to 1 one column per step), so no tensor grows;
- the new tokens stay on the device ((B, max_new_tokens) buffer) and are read back once;
- whether every row has hit EOS is read back only every `check_every` steps. The steps run after
  the last row finished only append padding to rows that are done, which the caller's cut after the
  first EOS removes: the tokens are the plain loop's.

Models whose forward or cache cannot take this (an exception on the first batch) go back to the
plain loop; `greedy_generate` remembers that per model class.

On a GPU, `graph_greedy` (below) replays the same loop from CUDA graphs captured per batch shape.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections import OrderedDict

import torch

from tensorllm.eval import fast_paths

# model classes (by qualified name) for which the static path raised: the plain loop is used
UNSUPPORTED: set[str] = set()


@functools.lru_cache(maxsize=1)
def _cache_class():
    try:
        from transformers import StaticCache
    except ImportError:  # a transformers without it: the plain loop
        return None
    return StaticCache


def make_static_cache(model, batch: int, max_cache_len: int, device, dtype):
    """A StaticCache of `max_cache_len` columns; the constructor's arguments are read from its
    signature (transformers 5.x takes config + max_cache_len and sizes itself on first use; 4.x
    also asked for the batch size, device and dtype), never from the version number."""
    cls = _cache_class()
    if cls is None:
        raise NotImplementedError("transformers has no StaticCache")
    params = inspect.signature(cls.__init__).parameters
    kwargs = {"config": model.config, "max_cache_len": max_cache_len}
    extra = {"max_batch_size": batch, "batch_size": batch, "device": device, "dtype": dtype}
    kwargs.update({k: v for k, v in extra.items() if k in params})
    return cls(**kwargs)


def supports_static(model) -> bool:
    """False when the static path failed before for this model class, or cannot apply at all."""
    if type(model).__qualname__ in UNSUPPORTED or _cache_class() is None:
        return False
    return bool(getattr(model, "_supports_static_cache", True))


@torch.inference_mode()
def static_greedy(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    *,
    max_new_tokens: int,
    eos: torch.Tensor,
    pad_id: int,
    min_new_tokens: int = 1,
    params: frozenset[str],
    cache_arg: str,
    check_every: int = 4,
    on_prompt=None,
) -> list[list[int]]:
    """Greedy tokens of one left-padded batch, (B, n) as lists, n <= max_new_tokens steps.

    ids, mask, pos: (B, T) from `decoder.left_pad`; eos: (E,) token ids on the model's device.
    Row r's list holds what the plain loop records for it (padding after its EOS, which the caller
    cuts); n is max_new_tokens unless every row finished, seen at a check every `check_every` steps.
    params: the names `model.forward` takes; cache_arg: the name of its cache argument.
    on_prompt: called with the (B, V) logits after the prompt, before any step.
    """
    batch, width = ids.shape
    total = width + max_new_tokens
    device = ids.device
    cache = make_static_cache(model, batch, total, device, next(model.parameters()).dtype)
    full_mask = torch.zeros((batch, total), dtype=mask.dtype, device=device)  # (B, T + N)
    full_mask[:, :width] = mask
    columns = torch.arange(total, device=device)  # cache positions, for a forward that asks for them
    kwargs = {cache_arg: cache, "use_cache": True}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1

    def forward(tokens: torch.Tensor, positions: torch.Tensor, start: int) -> torch.Tensor:
        """tokens, positions: (B, t), written at cache columns start..start+t-1 -> (B, V) last logits."""
        extra = {"position_ids": positions} if "position_ids" in params else {}
        if "cache_position" in params:
            extra["cache_position"] = columns[start : start + tokens.shape[1]]
        out = model(input_ids=tokens, attention_mask=full_mask, **kwargs, **extra)
        return out.logits[:, -1, :]

    next_pos = [pos[:, -1:] + 1]  # (B, 1), advanced after each step

    def step_fn(nxt: torch.Tensor, step: int) -> torch.Tensor:
        full_mask[:, width + step] = 1
        logits = forward(nxt[:, None], next_pos[0], width + step)
        next_pos[0] = next_pos[0] + 1
        return logits

    loop = dict(max_new_tokens=max_new_tokens, eos=eos, pad_id=pad_id, min_new_tokens=min_new_tokens)
    first = forward(ids, pos, 0)
    if on_prompt is not None:
        on_prompt(first)
    return token_loop(first, step_fn, check_every=check_every, **loop)


def token_loop(
    logits, step_fn, *, max_new_tokens, eos, pad_id, min_new_tokens, check_every
) -> list[list[int]]:
    """The greedy steps of both loops. logits: (B, V) after the prompt; step_fn(tokens (B,), step) feeds
    step `step`'s tokens and returns the next (B, V) logits -> (B, n) token lists (see static_greedy)."""
    batch, device = logits.shape[0], logits.device
    bias = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=device)  # (V,)
    if eos.numel():
        bias[eos] = float("-inf")  # EOS forbidden while step < min_new_tokens
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)  # (B, N)
    steps = max_new_tokens
    for step in range(max_new_tokens):
        if step < min_new_tokens:
            logits = logits + bias
        nxt = torch.where(done, pad_id, logits.argmax(-1))  # (B,)
        out[:, step] = nxt
        done |= torch.isin(nxt, eos)
        if step + 1 == max_new_tokens:
            break
        if (step + 1) % check_every == 0 and bool(done.all()):  # the only host sync in the loop
            steps = step + 1
            break
        logits = step_fn(nxt, step)
    return out[:, :steps].tolist()


# -- CUDA graphs --------------------------------------------------------------------------------------
#
# On a GPU the static loop above is still launch-bound: each step of a 30-layer model is hundreds of
# small kernels issued from Python. Here the prefill and one decode step are each captured once as a
# CUDA graph per batch shape (rows, prompt width, new tokens) and replayed; the captures are kept per
# model and reused by every later call with that shape, so a search that scores configuration after
# configuration on the same items pays for them once. transformers' StaticCache keeps its write position
# as a device tensor that each update advances in place, so the captured kernels write where the
# replays have got to; each call resets it. A capture reads the parameters where they lie:
# it is dropped when any parameter's storage moved (the search's edits copy into place, so they keep
# it). The kernels are the static loop's, so the tokens are the static loop's.


class _Captured:
    """The buffers and graphs of one batch shape: inputs are copied in, logits read out."""

    def __init__(self, model, ids, mask, pos, new_tokens: int, params, cache_arg: str):
        (batch, width), device = ids.shape, ids.device
        total = width + new_tokens
        dtype = next(model.parameters()).dtype
        self.ptrs = _param_ptrs(model)
        self.nbytes = 0  # GPU memory it holds (measured by _build)
        self.width = width
        self.cache = make_static_cache(model, batch, total, device, dtype)
        self.ids = torch.zeros((batch, width), dtype=torch.long, device=device)  # (B, T)
        self.pos = torch.zeros((batch, width), dtype=torch.long, device=device)  # (B, T)
        self.mask = torch.zeros((batch, total), dtype=torch.long, device=device)  # (B, T + N)
        self.tok = torch.zeros((batch, 1), dtype=torch.long, device=device)  # (B, 1)
        self.tok_pos = torch.zeros((batch, 1), dtype=torch.long, device=device)  # (B, 1)
        self.column = torch.zeros((1,), dtype=torch.long, device=device)  # the step's cache column
        self.prefill_columns = torch.arange(width, device=device)
        kwargs = {cache_arg: self.cache, "use_cache": True, "attention_mask": self.mask}
        if "logits_to_keep" in params:
            kwargs["logits_to_keep"] = 1

        def run(tokens, positions, columns):
            extra = {"position_ids": positions} if "position_ids" in params else {}
            if "cache_position" in params:
                extra["cache_position"] = columns
            return model(input_ids=tokens, **kwargs, **extra).logits[:, -1, :]  # (B, V)

        self.load(ids, mask, pos)  # the warm-ups run on real inputs
        self.column.fill_(width)
        self.tok.copy_(ids[:, -1:])
        self.prefill_graph, self.prefill_logits = _capture(
            lambda: run(self.ids, self.pos, self.prefill_columns)
        )
        pool = self.prefill_graph.pool()
        self.step_graph, self.step_logits = _capture(lambda: run(self.tok, self.tok_pos, self.column), pool)

    def load(self, ids, mask, pos) -> None:
        self.ids.copy_(ids)
        self.pos.copy_(pos)
        self.mask.zero_()
        self.mask[:, : self.width] = mask
        self.tok_pos.copy_(pos[:, -1:] + 1)


def _param_ptrs(model) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


def _capture(fn, pool=None):
    """Run `fn` once eagerly on a side stream (warm-up: lazy allocations, library handles), then capture
    it; returns (graph, its output tensor, refreshed by every replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


# model -> {(rows, width, new tokens, attention implementation, inside fast_forward): _Captured}, least
# recently used first; entries go with their model. Each holds a static cache of its shape (SmolLM2 at
# 2,048 rows x 42 columns: ~2 GB in bf16) and its graphs' memory pool, so only the last MAX_CAPTURES
# shapes are kept, and fewer when together they would hold more than CAPTURE_MEMORY_FRACTION of the
# GPU's memory. `decoder.greedy_generate` pads batches to bucketed shapes (`bucket_rows`,
# `bucket_width`), so a pass over many prompt lengths needs only a few captures.
_CAPTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
MAX_CAPTURES = 8
CAPTURE_MEMORY_FRACTION = 0.25
WIDTH_BUCKET = 8


def bucket_rows(n: int) -> int:
    """n rounded up to a quarter of its octave (at most 25% more rows): 237 -> 256, 714 -> 768."""
    if n <= 4:
        return n
    step = 1 << (n.bit_length() - 3)  # n in [2^k, 2^(k+1)) -> steps of 2^(k-2)
    return -(-n // step) * step


def bucket_width(width: int) -> int:
    """A prompt width rounded up to a multiple of WIDTH_BUCKET columns."""
    return -(-width // WIDTH_BUCKET) * WIDTH_BUCKET


def pad_batch(
    ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, rows: int, width: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A left-padded batch (B, T) grown to (rows, width): more left padding (masked, positions unchanged,
    so each row computes what it computed before) and copies of the last row (whose tokens the caller
    drops). rows >= B, width >= T."""
    batch, extra = ids.shape[0], width - ids.shape[1]
    if extra:
        ids = torch.nn.functional.pad(ids, (extra, 0), value=pad_id)
        mask = torch.nn.functional.pad(mask, (extra, 0))
        pos = torch.nn.functional.pad(pos, (extra, 0))
    if rows > batch:
        index = torch.arange(rows, device=ids.device).clamp(max=batch - 1)
        ids, mask, pos = ids[index], mask[index], pos[index]
    return ids, mask, pos


def _build(shapes: OrderedDict, key, build, device: torch.device) -> _Captured:
    """A new capture for `key`, its memory measured; older ones dropped (least recently used first) to
    stay within MAX_CAPTURES and CAPTURE_MEMORY_FRACTION. Out of memory while capturing: every other
    capture is dropped and it is tried once more."""
    while len(shapes) >= MAX_CAPTURES:
        shapes.popitem(last=False)

    def held() -> tuple[int, int]:
        return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)

    try:
        before = held()
        cap = build()
    except torch.OutOfMemoryError:
        shapes.clear()
        torch.cuda.empty_cache()
        before = held()
        cap = build()
    # its cache and buffers stay allocated; its graphs' pool stays reserved (reserved memory grows less
    # than that when the allocator had free blocks to hand out)
    cap.nbytes = max(after - b for after, b in zip(held(), before))
    budget = CAPTURE_MEMORY_FRACTION * torch.cuda.get_device_properties(device).total_memory
    while shapes and cap.nbytes + sum(c.nbytes for c in shapes.values()) > budget:
        shapes.popitem(last=False)
    shapes[key] = cap
    return cap


# model classes (by qualified name) whose forward could not be captured: the eager loops are used
NO_GRAPHS: set[str] = set()


def supports_graphs(model, device: torch.device) -> bool:
    return device.type == "cuda" and supports_static(model) and type(model).__qualname__ not in NO_GRAPHS


@torch.inference_mode()
def graph_greedy(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    *,
    max_new_tokens: int,
    eos: torch.Tensor,
    pad_id: int,
    min_new_tokens: int = 1,
    params: frozenset[str],
    cache_arg: str,
    check_every: int = 4,
    on_prompt=None,
) -> list[list[int]]:
    """`static_greedy`'s tokens from replayed CUDA graphs (see above); the same arguments. The caller
    pads batches to bucketed shapes (`pad_batch`), so that captures are reused."""
    batch, width = ids.shape
    # how the model computes too (eval/fast_paths switches the attention and hooks the output head), as a
    # capture replays what it captured
    impl = getattr(model.config, "_attn_implementation", None)
    key = (batch, width, max_new_tokens, impl, fast_paths.inside(model))
    shapes = _CAPTURES.setdefault(model, OrderedDict())
    cap = shapes.get(key)
    if cap is not None and cap.ptrs != _param_ptrs(model):
        shapes.clear()  # a parameter moved: every capture of this model reads stale storage
        cap = None
    if cap is None:
        build = lambda: _Captured(model, ids, mask, pos, max_new_tokens, params, cache_arg)  # noqa: E731
        cap = _build(shapes, key, build, ids.device)
    shapes.move_to_end(key)
    cap.cache.reset()  # its write position is a device counter the replays advance (keys, values zeroed)
    cap.load(ids, mask, pos)
    cap.prefill_graph.replay()
    if on_prompt is not None:
        on_prompt(cap.prefill_logits)

    def step_fn(nxt: torch.Tensor, step: int) -> torch.Tensor:
        cap.mask[:, width + step] = 1
        cap.tok.copy_(nxt[:, None])
        cap.column.fill_(width + step)
        if step:
            cap.tok_pos += 1
        cap.step_graph.replay()
        return cap.step_logits

    loop = dict(max_new_tokens=max_new_tokens, eos=eos, pad_id=pad_id, min_new_tokens=min_new_tokens)
    return token_loop(cap.prefill_logits, step_fn, check_every=check_every, **loop)
