"""Masked-LM scoring for encoder models (BERT, RoBERTa with an MLM head), LASER-style.

Encoders do not generate: the prompt gets mask tokens appended and the model fills them. For
accuracy LASER appends 5 masks and decodes the argmax at each; for the loss the gold answer's own
tokens (as many as it has) are masked in `prompt + " " + answer` and scored at the masks.
Batches are right-padded (bidirectional attention, absolute positions: padding on the right with
an attention mask changes nothing for the real tokens).
"""

from __future__ import annotations

import torch

from tensorllm.base.devices import input_device
from tensorllm.base.errors import UserError
from tensorllm.base.progress import track
from tensorllm.eval.decoder import length_batches

ACCURACY_MASKS = 5  # LASER's RoBERTa runs append "<mask>" x 5 for generative accuracy


def right_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _mask_logits(model, seqs, mask_id, pad_id, batch_size, max_batch_tokens, progress, what):
    """Yield (batch indices, mask rows, logits at the masks) batch by batch; logits: (M, V)."""
    device = input_device(model)
    for batch in track(
        length_batches([len(s) for s in seqs], batch_size, max_batch_tokens), what, enabled=progress
    ):
        ids, attn = right_pad([seqs[i] for i in batch], pad_id, device)
        logits = model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
        where = (ids == mask_id).nonzero()  # (M, 2): (row, column), row-major order
        yield batch, where[:, 0], logits[where[:, 0], where[:, 1]]


@torch.inference_mode()
def mlm_fill(
    model,
    seqs: list[list[int]],
    *,
    mask_id: int,
    pad_id: int,
    batch_size: int = 256,
    max_batch_tokens: int = 16384,
    progress: bool = True,
) -> list[list[int]]:
    """Argmax token at each mask of each sequence, in order."""
    out: list[list[int]] = [[] for _ in seqs]
    for batch, rows, logits in _mask_logits(
        model, seqs, mask_id, pad_id, batch_size, max_batch_tokens, progress, "fill masks"
    ):
        for r, tok in zip(rows.tolist(), logits.argmax(-1).tolist()):
            out[batch[r]].append(tok)
    return out


@torch.inference_mode()
def mlm_gold_nll(
    model,
    seqs: list[list[int]],
    golds: list[list[int]],
    *,
    mask_id: int,
    pad_id: int,
    batch_size: int = 256,
    max_batch_tokens: int = 16384,
    progress: bool = True,
) -> list[tuple[float, int]]:
    """Per sequence, (sum of -log p(gold token) at its masks, number of masks)."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    for batch, rows, logits in _mask_logits(
        model, seqs, mask_id, pad_id, batch_size, max_batch_tokens, progress, "score masks"
    ):
        if rows.numel() != sum(len(golds[i]) for i in batch):
            raise UserError("a prompt contains the mask token itself; cannot score its answer")
        gold = torch.tensor([t for i in batch for t in golds[i]], device=logits.device)  # (M,) row-major
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, gold[:, None]).squeeze(-1)  # (M,)
        sums = torch.zeros(len(batch), device=logits.device).index_add_(0, rows, -lp).tolist()
        for r, i in enumerate(batch):
            out[i] = (sums[r], len(golds[i]))
    return out


@torch.inference_mode()
def mlm_label_logprobs(
    model,
    seqs: list[list[int]],
    token_ids: list[int],
    *,
    mask_id: int,
    pad_id: int,
    batch_size: int = 256,
    max_batch_tokens: int = 16384,
    progress: bool = True,
) -> torch.Tensor:
    """(N, L) float32 log-probabilities of `token_ids` at the single mask of each sequence."""
    out = torch.empty((len(seqs), len(token_ids)), dtype=torch.float32)
    cand = None
    for batch, rows, logits in _mask_logits(
        model, seqs, mask_id, pad_id, batch_size, max_batch_tokens, progress, "classify"
    ):
        if cand is None:
            cand = torch.tensor(token_ids, device=logits.device)
        lp = torch.log_softmax(logits.float(), dim=-1)[:, cand]  # (B, L), one mask per row
        out[torch.tensor(batch)[rows.cpu()]] = lp.cpu()
    return out
