"""Recovery (`compress ... --recover STEPS`): a short distillation of the compressed model against the
original, training only the factors (issue 16, item 6).

The factorised modules (runtime/factorised_modules.py) are installed in the compressed model, every
other parameter is frozen, and the factors (Tucker's U1, U2 and cores, LASER's two thin matrices) are
trained to minimise the KL divergence from the original model's next-token distribution on its own
text (the GQA fine-tune's loss and learning-rate schedule: warm-up over 2% of the steps, then a half
cosine down to a tenth). The biases, norms, embeddings and FFNs the recipe did not touch stay as they
were. Factors are trained in float32 (a bf16/fp16 model is refused: load it with --dtype float32).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from tensorllm.base.errors import UserError
from tensorllm.base.progress import track
from tensorllm.methods.gqa.finetune import _kl, lr_factor


def factor_parameters(model: nn.Module, spec: dict) -> list[tuple[str, nn.Parameter]]:
    """The factors of every factorised module of `spec` (no biases), by parameter name."""
    prefixes = tuple(e["path"] + "." for e in spec["modules"])
    return [(n, p) for n, p in model.named_parameters() if n.startswith(prefixes) and not n.endswith(".bias")]


def recover(
    model: nn.Module,
    teacher: nn.Module,
    spec: dict,
    tokens: torch.Tensor,
    *,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Distil `teacher` into the factors of `model` over `steps` batches of `tokens` (n_seq, seq_len)."""
    if steps < 1:
        raise UserError(f"--recover takes a number of steps >= 1, got {steps}")
    named = factor_parameters(model, spec)
    if not named:
        raise UserError("recovery trains factors, and the model holds none")
    if any(p.dtype != torch.float32 for _, p in named):
        raise UserError("recovery trains float32 factors: load the model with --dtype float32")
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for _, p in named]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    dev = params[0].device
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(tokens), generator=gen)
    losses, t0 = [], time.perf_counter()
    model.train()
    try:
        for step in track(range(steps), "recovery", enabled=progress, total=steps):
            rows = order[torch.arange(step * batch_size, (step + 1) * batch_size) % len(tokens)]
            batch = tokens[rows].to(dev)
            with torch.no_grad():
                target = teacher(input_ids=batch, use_cache=False).logits
            loss = _kl(model(input_ids=batch, use_cache=False).logits, target)
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, steps, "cosine")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(was.get(n, False))
    tail = losses[-max(1, steps // 10) :]
    return {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seq_len": int(tokens.shape[1]),
        "trained_parameters": sum(p.numel() for p in params),
        "kl_first": losses[0],
        "kl_last": losses[-1],
        "kl_last_tenth": sum(tail) / len(tail),
        "seconds": time.perf_counter() - t0,
        "curve": losses[:: max(1, steps // 50)],
    }
