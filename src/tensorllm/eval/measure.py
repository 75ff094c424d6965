"""What a conversion buys and costs: held-out perplexity, KV-cache bytes, decode speed."""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from tensorllm.archs import head_layout, text_config


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over rows of `tokens` (n_seq, seq_len), each row its own context."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for batch in torch.split(tokens, batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # (B, T-1, V)
        nll += float(F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"))
        count += batch[:, 1:].numel()
    return math.exp(nll / count)


def kv_cache_bytes_per_token(model: nn.Module) -> int:
    """Bytes one token adds to the KV cache: 2 (K and V) x layers x K/V heads x head_dim x element size."""
    _, _, heads, head_dim = head_layout(model.config)  # the language model's (multimodal configs nest it)
    size = next(model.parameters()).element_size()
    return 2 * text_config(model.config).num_hidden_layers * heads * head_dim * size


class StepClock:
    """A `generate` streamer that only timestamps: `put` runs once for the prompt, then once per new
    token after the token was copied to the host (so the device has finished that step)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.no_grad()
def decode_step_ms(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int, *, repeats: int = 1, **kw
) -> dict:
    """Median milliseconds per greedy decode step of `generate` (the prefill excluded), after a warm-up."""
    run = dict(
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        **kw,
    )
    model.generate(prompt, **run)  # warm-up: compilation / CUDA graph capture happen here
    steps, prefill = [], []
    for _ in range(repeats):
        clock = StepClock()
        model.generate(prompt, streamer=clock, **run)
        t = torch.tensor(clock.times, dtype=torch.float64)
        prefill.append(
            float(t[1] - t[0])
        )  # [0]: prompt handed over, [1]: first new token (after the prefill)
        steps.append(torch.diff(t[1:]))
    ms = 1000 * float(torch.cat(steps).median())
    return {
        "ms_per_step": ms,
        "tokens_per_s": 1000 * prompt.shape[0] / ms,
        "prefill_seconds": min(prefill),
        "steps_timed": int(sum(len(x) for x in steps)),
    }


@torch.no_grad()
def decode_loop_ms(
    model: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    *,
    repeats: int = 1,
    warmup: int = 8,
    compile: bool = True,
    backend: str = "inductor",
) -> dict:
    """Milliseconds per greedy decode step of a host-sync-free loop over one compiled step (static cache).

    transformers' `generate` reads each new token back to the host before it launches the next step
    (its stopping check), so the device idles while Python runs the loop. Here, as in gpt-fast, the
    prompt (B, T) of real tokens (no padding) is prefilled into a `StaticCache` (eager), then one
    step — forward of the last token + argmax — is compiled (mode "reduce-overhead": CUDA graphs;
    `compile=False` runs it eagerly; another `backend`, e.g. "aot_eager", traces the same full graph
    without inductor's code generation) and called until `warmup` tokens exist, then `repeats` timed
    segments of `new_tokens` steps; each token feeds the next step on the device and nothing is read
    back until a segment ends. ms/step = the median of the segments' time / new_tokens. Returns also
    `tokens`: (B, warmup + repeats * new_tokens) greedy ids
    (plain argmax, no EOS rule), which equal a cache-free greedy reference's (tested).
    """
    from transformers import StaticCache

    from tensorllm.eval.decoder import cache_argument, forward_params

    if warmup < 1 or repeats < 1 or new_tokens < 1:
        raise ValueError(
            f"warmup, repeats and new_tokens must be >= 1, got {warmup}, {repeats}, {new_tokens}"
        )
    if compile and backend == "inductor" and warmup < 3:  # CUDA graphs are recorded on the 2nd-3rd call
        raise ValueError(f"warmup must be >= 3 when compiling with CUDA graphs, got {warmup}")
    batch, length = prompt.shape
    device = prompt.device
    steps = warmup + repeats * new_tokens
    cache = StaticCache(config=model.config, max_cache_len=length + steps)
    kw = {cache_argument(model): cache, "use_cache": True}
    if "logits_to_keep" in forward_params(model):
        kw["logits_to_keep"] = 1
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(tok: torch.Tensor) -> torch.Tensor:  # (B, 1) -> (B, 1): the next greedy token
        return model(input_ids=tok, **kw).logits[:, -1].argmax(-1, keepdim=True)

    options = {"mode": "reduce-overhead"} if backend == "inductor" else {}
    decode = torch.compile(step, backend=backend, fullgraph=True, **options) if compile else step
    sync()
    t0 = time.perf_counter()
    tok = model(input_ids=prompt, **kw).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1), prefill
    sync()
    prefill = time.perf_counter() - t0
    out = [tok]
    for _ in range(warmup - 1):  # compile and CUDA-graph capture happen here
        tok = decode(tok).clone()  # a CUDA graph's output buffer is overwritten by its next replay
        out.append(tok)
    segments = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            tok = decode(tok).clone()
            out.append(tok)
        sync()
        segments.append((time.perf_counter() - t0) / new_tokens)
    ms = 1000 * statistics.median(segments)
    return {
        "ms_per_step": ms,
        "tokens_per_s": 1000 * batch / ms,
        "prefill_seconds": prefill,
        "steps_timed": repeats * new_tokens,
        "tokens": torch.cat(out, dim=1).cpu(),
    }


def decode_tokens_per_s(
    model: nn.Module, *, batch: int = 1, prompt_len: int = 16, new_tokens: int = 32, seed: int = 0
) -> float:
    """Greedy-decode throughput of transformers' default `generate` (tokens/s summed over the batch)."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=gen)
    return decode_step_ms(model, prompt.to(next(model.parameters()).device), new_tokens)["tokens_per_s"]
