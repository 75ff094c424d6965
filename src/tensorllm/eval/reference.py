"""The unedited model's path through a split's items, reused to score edited models faster.

A search scores many configurations of one model, each changing only blocks >= L (its first edited
decoder block). On the same tokens the hidden states entering block L are then the unedited model's,
so they are captured once, while the baseline's gold-answer loss is computed (forward pre-hooks on
every block), and each configuration's teacher-forced loss pass starts at block L: the blocks below
are swapped for pass-throughs and block L is handed the stored states. The result is the one the full
pass gives (the same arithmetic on the same inputs above block L; tests/search/test_reference.py).

Generation is not shortened this way. Checking an edited model's greedy continuation against the
baseline's in one teacher-forced pass was tried (2026-12-02): after a Tucker edit of one SmolLM2 layer
only 5-20% of WikidataQA rows kept the baseline's 10 tokens (most diverge at the second token), so
the check cost more than it saved.

Stored per item: (blocks, positions, D) in the model's dtype, on its device, for prompt + gold answer,
only for the items whose loss needs that pass: a one-token answer's loss comes from the generation's
first step (eval/scoring.py `one_token_answers`), so those items are only marked as covered.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


class _PassThrough(nn.Module):
    """Stands in for a decoder block below the first edited one: returns its input unchanged."""

    def __init__(self, tuple_out: bool):
        super().__init__()
        self.tuple_out = tuple_out

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if self.tuple_out else hidden


def _replace_hidden(states: torch.Tensor):
    def hook(module, args, kwargs):
        if args:
            return (states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": states}

    return hook


@dataclass
class Reference:
    """Every block's input, per item of a split (index within the split), as the unedited model ran."""

    blocks: nn.ModuleList
    states: dict[int, torch.Tensor] = field(default_factory=dict)  # item -> (blocks, len, D)
    covered: set[int] = field(default_factory=set)  # items a capture ran over (stored, or needing none)
    tuple_out: bool = False  # what the blocks return (transformers < 5: a tuple)
    stored_bytes: int = 0  # of `states`, kept up to date by `capture`

    def has(self, items: list[int]) -> bool:
        return all(i in self.states for i in items)

    def nbytes(self) -> int:
        return self.stored_bytes

    @contextmanager
    def capture(self, items: list[int], lengths: list[int]):
        """Record, for one left-padded batch whose rows are `items` (real lengths `lengths`), every
        block's input per row."""
        inputs: list[torch.Tensor] = []

        def pre(module, args, kwargs):
            inputs.append(args[0] if args else kwargs["hidden_states"])

        def post(module, args, output):
            self.tuple_out = isinstance(output, tuple)

        handles = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in self.blocks]
        handles.append(self.blocks[0].register_forward_hook(post))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if len(inputs) != len(self.blocks):
            raise RuntimeError(f"captured {len(inputs)} block inputs, expected {len(self.blocks)}")
        stacked = torch.stack(inputs, dim=0)  # (blocks, B, T, D)
        width = stacked.shape[2]
        for r, item in enumerate(items):
            old = self.states.get(item)
            new = self.states[item] = stacked[:, r, width - lengths[r] :].clone()
            self.stored_bytes += new.numel() * new.element_size() - (
                0 if old is None else old.numel() * old.element_size()
            )

    @contextmanager
    def start_at(self, layer: int, items: list[int], width: int):
        """Run one left-padded batch (rows `items`, `width` columns) from block `layer` on: blocks below
        pass through, block `layer` gets the stored states. layer 0: nothing to skip."""
        if layer <= 0:
            yield
            return
        first = self.states[items[0]]
        states = first.new_zeros((len(items), width, first.shape[-1]))  # padding columns: masked anyway
        for r, item in enumerate(items):
            s = self.states[item][layer]  # (len, D)
            states[r, width - s.shape[0] :] = s
        originals = [self.blocks[i] for i in range(layer)]
        handle = self.blocks[layer].register_forward_pre_hook(_replace_hidden(states), with_kwargs=True)
        try:
            for i in range(layer):
                self.blocks[i] = _PassThrough(self.tuple_out)
            yield
        finally:
            for i, b in enumerate(originals):
                self.blocks[i] = b
            handle.remove()


@dataclass
class ReferencePath:
    """How one evaluation uses a Reference: items `first`.. of the split; `layer` None = capture (the
    model is the unedited one), else the configuration's first edited block."""

    ref: Reference
    first: int
    layer: int | None

    def items(self, n: int) -> list[int]:
        return list(range(self.first, self.first + n))

    def around(self, n: int, rows: list[int]):
        """The decoder's per-batch hook (decoder.Around) for the loss pass over items `rows` of the `n`
        evaluated (the others need no pass), or None. A capture marks all n as covered."""
        items = [self.first + r for r in rows]
        if self.layer is None:
            self.ref.covered.update(self.items(n))
            return lambda batch, mask: self.ref.capture([items[b] for b in batch], mask.sum(dim=1).tolist())
        if self.layer == 0 or not self.ref.has(items):
            return None
        return lambda batch, mask: self.ref.start_at(self.layer, [items[b] for b in batch], mask.shape[1])
