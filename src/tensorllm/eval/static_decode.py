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
"""

from __future__ import annotations

import functools
import inspect

import torch

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
) -> list[list[int]]:
    """Greedy tokens of one left-padded batch, (B, n) as lists, n <= max_new_tokens steps.

    ids, mask, pos: (B, T) from `decoder.left_pad`; eos: (E,) token ids on the model's device.
    Row r's list holds what the plain loop records for it (padding after its EOS, which the caller
    cuts); n is max_new_tokens unless every row finished, seen at a check every `check_every` steps.
    params: the names `model.forward` takes; cache_arg: the name of its cache argument.
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

    logits = forward(ids, pos, 0)  # (B, V)
    bias = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=device)  # (V,)
    if eos.numel():
        bias[eos] = float("-inf")  # EOS forbidden while step < min_new_tokens
    next_pos = pos[:, -1:] + 1  # (B, 1)
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
        full_mask[:, width + step] = 1
        logits = forward(nxt[:, None], next_pos, width + step)
        next_pos = next_pos + 1
    return out[:, :steps].tolist()
