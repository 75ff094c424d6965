"""Batched greedy generation and teacher-forced scoring for decoder-only (causal) LMs.

Every batch is LEFT-padded, so all rows end in the last column: the next-token logits of every
row are at position -1 and a row's answer tokens are its last columns. Position ids count real
tokens only, so a padded row computes what it would compute alone. Rows are sorted by length
(longest first, ties by index: deterministic, and an out-of-memory shows in the first batch) so a
batch holds similar lengths. The model runs in its own dtype (bf16 on GPU); log-softmax in float32.
Only the logits that are needed are materialised (`logits_to_keep` where the model supports it).
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from tensorllm.base.devices import input_device
from tensorllm.base.progress import track
from tensorllm.eval import static_decode
from tensorllm.eval.fast_paths import fast_forward


@functools.lru_cache(maxsize=64)
def _forward_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def forward_params(model) -> frozenset[str]:
    """The argument names of the model's `forward` (transformers' signatures differ between versions)."""
    return _forward_params(type(model))


def length_batches(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of <= batch_size rows and <= max_batch_tokens padded tokens."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)  # stable: ties by index
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        # sorted longest first, so the first row of a batch sets its padded width
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * lengths[cur[0]] > max_batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, position_ids), each (B, T), rows right-aligned."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))  # (B,)
    width = int(lengths.max())
    real = np.arange(width)[None, :] >= (width - lengths)[:, None]  # (B, T): True on each row's tokens
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    ids[real] = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    ids, mask = torch.from_numpy(ids), torch.from_numpy(real.astype(np.int64))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # 0 at each row's first real token
    return ids.to(device), mask.to(device), pos.to(device)


def cache_argument(model) -> str:
    """The name of the model's KV-cache argument: transformers >= 5.2x calls it `cache`, earlier
    `past_key_values`."""
    return "cache" if "cache" in forward_params(model) else "past_key_values"


def _run(model, ids, mask, pos, *, keep: int | None = None, past=None, use_cache: bool = False):
    params = forward_params(model)
    kwargs = dict(input_ids=ids, attention_mask=mask, use_cache=use_cache)
    if "position_ids" in params:
        kwargs["position_ids"] = pos
    if past is not None:
        kwargs[cache_argument(model)] = past
    if keep is not None and "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    out = model(**kwargs)
    logits = out.logits if keep is None else out.logits[:, -keep:]
    if not use_cache:
        return logits, None
    return logits, out.cache if hasattr(out, "cache") else out.past_key_values


def _plain_greedy(
    model, ids, mask, pos, *, max_new_tokens, eos, pad_id, min_new_tokens, on_prompt=None
) -> list[list[int]]:
    """The plain loop over one left-padded batch: a growing DynamicCache, a host sync per step.

    ids, mask, pos: (B, T); eos: (E,) -> per row its tokens ((B, n) as lists, padding after EOS).
    on_prompt: called with the (B, V) logits after the prompt, before any step (every loop takes it).
    """
    logits, past = _run(model, ids, mask, pos, keep=1, use_cache=True)
    logits = logits[:, -1, :]  # (B, V)
    if on_prompt is not None:
        on_prompt(logits)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    steps = []
    for step in range(max_new_tokens):
        if step < min_new_tokens and eos.numel():
            logits[:, eos] = float("-inf")
        nxt = torch.where(done, pad_id, logits.argmax(-1))  # (B,)
        steps.append(nxt)
        done |= torch.isin(nxt, eos)
        if step + 1 == max_new_tokens or bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones((ids.shape[0], 1))], dim=1)
        pos = pos[:, -1:] + 1
        logits, past = _run(model, nxt[:, None], mask, pos, past=past, use_cache=True)
        logits = logits[:, -1, :]
    return torch.stack(steps, dim=1).tolist()  # (B, steps)


def _use_static(model, device: torch.device, static: bool | None) -> bool:
    """static=None: the plain loop for now. Eager, the static one measured no faster: a random
    SmolLM2-shaped bf16 model, 18,933 prompts, batch 2048 on an H200: 5.99 s vs 5.65 s (the host
    time of each layer's cuDNN attention call dominates, not the cache or the syncs); on 2 shared
    CPU cores the two orders came out both ways. `bench/eval_wikidata.py` times both."""
    return bool(static) and static_decode.supports_static(model)


def _use_graphs(model, device: torch.device, graphs: bool | None) -> bool:
    """graphs=None: on a GPU, the static loop replayed from CUDA graphs (static_decode.graph_greedy)."""
    return (graphs is None or bool(graphs)) and static_decode.supports_graphs(model, device)


def _first_batch_or_fail(loop, n: int, failed: set[str], model, *args, **kwargs):
    """`loop`'s rows, or None when it raised on the first batch (n == 0): the model's class goes into
    `failed` and the caller falls back; on a later batch (it worked before) the error is real."""
    try:
        return loop(model, *args, **kwargs)
    except torch.OutOfMemoryError:
        raise
    except Exception:
        if n:
            raise
        failed.add(type(model).__qualname__)
        return None


def greedy_generate(model, prompts: list[list[int]], **kwargs) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), cut after the first EOS (kept); the arguments
    are `generate_and_score`'s but `targets`."""
    return generate_and_score(model, prompts, None, **kwargs)[0]


@torch.inference_mode()
def generate_and_score(
    model,
    prompts: list[list[int]],
    targets: list[int | None] | None,
    *,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    min_new_tokens: int = 1,
    batch_size: int = 256,
    max_batch_tokens: int = 65536,
    progress: bool = True,
    static: bool | None = None,
    graphs: bool | None = None,
) -> tuple[list[list[int]], list[float | None]]:
    """Greedy continuation of each prompt (token ids), cut after the first EOS (kept), and per prompt
    the NLL of `targets[i]` as the next token after it (None where targets[i] is None, or no targets).

    The NLL is read from the logits the prompt's forward computes for the first step anyway (full-
    vocabulary log-softmax in float32): a one-token gold answer's teacher-forced loss without a pass
    of its own. Computed before EOS is forbidden (min_new_tokens), so it is the model's own.
    Greedy decoding is `model.generate(do_sample=False, max_new_tokens=..., min_new_tokens=...)` one
    prompt at a time (LASER passes min_new_tokens=1: EOS is forbidden at the first step), with a KV cache.
    `static`: True = a preallocated cache and no host sync per step (eval/static_decode.py), False or
    None (the default) = the plain loop. `graphs`: None (the default) or True = on a GPU, that static
    loop replayed from CUDA graphs kept per batch shape; False = never. A model a path fails on
    (first batch) falls back to the next one; all give the same tokens. On a GPU every path runs each
    batch grown to its bucketed shape (static_decode.pad_batch: more left padding, copies of the last
    row), so a few graph captures serve all batches; in bf16 the shape moves some near-ties (1,418 of
    18,933 WikidataQA rows on an H200 got other tokens than unpadded), on every path alike.
    """
    device = input_device(model)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    eos_set = set(eos.tolist())
    # the loops to try, fastest first; one that fails on the first batch is dropped; then the plain loop
    loops = []
    if _use_graphs(model, device, graphs):
        loops.append((static_decode.graph_greedy, static_decode.NO_GRAPHS))
    if _use_static(model, device, static):
        loops.append((static_decode.static_greedy, static_decode.UNSUPPORTED))
    results: list[list[int]] = [[] for _ in prompts]
    scored: list[tuple[list[int], torch.Tensor]] = []  # (batch indices with a target, their NLLs on device)
    batches = length_batches([len(p) for p in prompts], batch_size, max_batch_tokens)
    args = dict(max_new_tokens=max_new_tokens, eos=eos, pad_id=pad_id, min_new_tokens=min_new_tokens)
    names = dict(params=forward_params(model), cache_arg=cache_argument(model))
    with fast_forward(model):
        for n, batch in enumerate(track(batches, "generate", enabled=progress)):
            ids, mask, pos = left_pad([prompts[i] for i in batch], pad_id, device)
            if device.type == "cuda":  # every path on the bucketed shape: the captures, the same tokens
                grown = static_decode.bucket_rows(len(batch)), static_decode.bucket_width(ids.shape[1])
                ids, mask, pos = static_decode.pad_batch(ids, mask, pos, *grown, pad_id)
            on_prompt = _target_nll(batch, targets, scored, device)
            rows = None
            while rows is None and loops:
                loop, failed = loops[0]
                rows = _first_batch_or_fail(
                    loop, n, failed, model, ids, mask, pos, **args, **names, on_prompt=on_prompt
                )
                if rows is None:
                    loops.pop(0)
            if rows is None:
                rows = _plain_greedy(model, ids, mask, pos, **args, on_prompt=on_prompt)
            for r, row in enumerate(rows[: len(batch)]):
                cut = next((j + 1 for j, t in enumerate(row) if t in eos_set), len(row))
                results[batch[r]] = row[:cut]
    nll: list[float | None] = [None] * len(prompts)
    if scored:  # one read back for all batches
        values = torch.cat([v for _, v in scored]).tolist()
        for i, value in zip(itertools.chain.from_iterable(k for k, _ in scored), values):
            nll[i] = value
    return results, nll


def _target_nll(batch: list[int], targets, scored: list, device) -> Callable[[torch.Tensor], None] | None:
    """The loops' `on_prompt` for one batch: appends (its rows' indices that have a target, their
    -log p(target) from the (B, V) prompt logits, on the device) to `scored`; None without targets."""
    rows = [r for r, i in enumerate(batch) if targets is not None and targets[i] is not None]
    if not rows:
        return None
    # copied to the device now, while it waits for this batch anyway (not between the loop's kernels)
    index = torch.tensor(rows, device=device)  # (R,)
    want = torch.tensor([targets[batch[r]] for r in rows], device=device)  # (R,)

    def on_prompt(logits: torch.Tensor) -> None:
        lp = _gathered_logprobs(logits[index][:, None, :], want[:, None])[:, 0]  # (R,)
        scored.append(([batch[r] for r in rows], -lp))

    return on_prompt


def _gathered_logprobs(logits: torch.Tensor, targets: torch.Tensor, budget: int = 1 << 27) -> torch.Tensor:
    """log_softmax(logits)[..., targets] in float32, computed a few rows at a time to bound memory.

    logits: (B, K, V); targets: (B, K) -> (B, K).
    """
    rows = max(1, budget // max(1, logits.shape[1] * logits.shape[2]))
    parts = []
    for s in range(0, logits.shape[0], rows):
        lp = torch.log_softmax(logits[s : s + rows].float(), dim=-1)  # (b, K, V)
        parts.append(lp.gather(-1, targets[s : s + rows, :, None]).squeeze(-1))
    return torch.cat(parts)


# around(rows, mask): a context manager entered around one batch's forward (rows: the batch's indices
# into the caller's list; mask: its (B, T) attention mask); eval/reference.py captures or skips blocks
Around = Callable[[list[int], torch.Tensor], AbstractContextManager]


def _around(around: Around | None, rows: list[int], mask: torch.Tensor) -> AbstractContextManager:
    return nullcontext() if around is None else around(rows, mask)


@torch.inference_mode()
def sequence_nll(
    model,
    seqs: list[list[int]],
    n_scored: list[int],
    *,
    pad_id: int,
    batch_size: int = 256,
    max_batch_tokens: int = 65536,
    progress: bool = True,
    around: Around | None = None,
) -> list[tuple[float, int]]:
    """Teacher forcing: per sequence, (sum of NLL, count) over its last n_scored tokens."""
    device = input_device(model)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    batches = length_batches([len(s) for s in seqs], batch_size, max_batch_tokens)
    with fast_forward(model):
        for batch in track(batches, "score", enabled=progress):
            ids, mask, pos = left_pad([seqs[i] for i in batch], pad_id, device)
            k = max(n_scored[i] for i in batch)
            with _around(around, batch, mask):
                logits, _ = _run(model, ids, mask, pos, keep=k + 1)
            logp = _gathered_logprobs(logits[:, :-1], ids[:, -k:])  # (B, k): column j predicts token T-k+j
            need = torch.tensor([n_scored[i] for i in batch], device=device)
            scored = torch.arange(k, device=device)[None, :] >= (k - need)[:, None]  # (B, k)
            sums = (-(logp * scored).sum(dim=1)).tolist()
            for r, i in enumerate(batch):
                results[i] = (sums[r], n_scored[i])
    return results


@torch.inference_mode()
def last_token_logprobs(
    model,
    prompts: list[list[int]],
    token_ids: list[int],
    *,
    pad_id: int,
    batch_size: int = 256,
    max_batch_tokens: int = 65536,
    progress: bool = True,
) -> torch.Tensor:
    """(N, L) float32 log-probabilities (full-vocabulary softmax) of `token_ids` after each prompt."""
    device = input_device(model)
    out = torch.empty((len(prompts), len(token_ids)), dtype=torch.float32)
    cand = torch.tensor(token_ids, dtype=torch.long, device=device)
    batches = length_batches([len(p) for p in prompts], batch_size, max_batch_tokens)
    with fast_forward(model):
        for batch in track(batches, "classify", enabled=progress):
            ids, mask, pos = left_pad([prompts[i] for i in batch], pad_id, device)
            logits, _ = _run(model, ids, mask, pos, keep=1)
            lp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)[:, cand]  # (B, L)
            out[torch.tensor(batch)] = lp.cpu()
    return out
