"""What a conversion buys and costs: held-out perplexity, KV-cache bytes, decode speed."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn


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
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    size = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * heads * head_dim * size


@torch.no_grad()
def decode_tokens_per_s(model: nn.Module, *, batch: int = 1, prompt_len: int = 16, new_tokens: int = 32,
                        vocab: int | None = None, seed: int = 0) -> float:
    """Greedy-decode throughput of transformers' default `generate` (tokens/s summed over the batch)."""
    device = next(model.parameters()).device
    vocab = vocab or model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=gen).to(device)
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    model.generate(prompt, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * new_tokens / (time.perf_counter() - t0)
