"""Recovery fine-tune: gates hand each head over from its own K/V to its group's shared K/V.

Each layer's k_proj / v_proj is wrapped by a `GatedKV`: K/V head j outputs
    z_j * own_j(x) + (1 - z_j) * shared_{g(j)}(x)
with own_j the aligned original head (frozen) and shared_g the group's merged head (trained).
z_j is a hard-concrete gate (Louizos et al. 2018): z = 1 keeps the original model, z = 0 is
pure GQA. The expected share of closed gates is pushed to a target that rises linearly from 0
to 1 over the first `sparsity_warmup` of the steps, with Lagrange multipliers (Xia et al.,
Sheared LLaMA: kl + l1 (s - t) + l2 (s - t)^2, the multipliers maximised). `l0_schedule: ceiling`
(the default) also holds log-alpha under a ceiling that falls with the target (gates.clamp_), so once
the warm-up ends every gate is closed (z = 0, the own heads are skipped) and the L0 term only orders
them; `lagrangian` (the paper's) leaves the gates free: sampled every step, no falling ceiling (only
log-alpha <= its start value: gates.bound_ says why), the Lagrangian alone pulls the expected share of
closed gates to the target, and they are closed at the export.
The loss is the KL divergence from the original model's next-token distribution on the
fine-tune text. Q, O and the shared K/V of every layer are trained (`train_scope: all`: every
weight but the original K/V heads), at a learning rate that warms up over the first 2% of the
steps and then follows a cosine down to a tenth of `lr` (`lr_schedule: cosine`, the default) or
stays at `lr` (`constant`).
At the end the gates are closed and the shared heads become the GQA checkpoint's K/V.
Everything trained (weights, gates, multipliers) and the optimiser states are float32: a bf16 or fp16
checkpoint is cast to float32 by `convert` before the fine-tune and back after the export.
An optional `monitor(model) -> float` (e.g. held-out perplexity) is called about 25 times with
every gate closed, i.e. on the GQA model an export at that step would give; it only observes.

Checkpoints (`train_dir/finetune.pt`) hold the trained tensors, gates, multipliers, optimiser
states, sampling RNG and the step; a later run with the same conversion resumes from them. The
learning rate at a step is a function of (step, train_steps), so a resumed run with the same
`train_steps` continues exactly; one given more steps continues on the longer run's schedule
(under the cosine the learning rate then rises to that schedule's value at the resumed step).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tensorllm.archs import ArchSpec, blocks, get_module, head_layout
from tensorllm.attention import read_attention
from tensorllm.base.errors import UserError
from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.methods.gqa.gates import install, uninstall_as_gqa

CKPT = "finetune.pt"


def _trainable(model, arch, scope: str) -> list[tuple[str, nn.Parameter]]:
    """The parameters the fine-tune trains: the gates always; "attention": Q, O and the shared K/V;
    "all": every weight but the frozen original K/V heads inside the gated wrappers."""
    model.requires_grad_(scope == "all")
    for block in blocks(model, arch):
        for path in (arch.q, arch.o):
            get_module(block, path).requires_grad_(True)
        for path in (arch.k, arch.v):
            wrapper = get_module(block, path)
            wrapper.own.requires_grad_(False)
            wrapper.shared.requires_grad_(True)
            wrapper.gates.requires_grad_(True)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student)."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    return F.kl_div(s.flatten(0, -2), t.flatten(0, -2), log_target=True, reduction="batchmean")


LR_WARMUP, LR_FLOOR = 0.02, 0.1  # share of the steps the learning rate warms up over; cosine's end / lr


def lr_factor(step: int, steps: int, schedule: str) -> float:
    """Multiplier of cfg.lr for 0-based `step` of `steps`: 'constant' 1; 'cosine' rises linearly over the
    first LR_WARMUP of the steps, then falls along a half cosine to LR_FLOOR at the last step."""
    if schedule == "constant":
        return 1.0
    warm = max(1, round(LR_WARMUP * steps))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, steps - 1 - warm)  # 0 -> 1 over the rest
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def finetune(
    model: nn.Module,
    arch: ArchSpec,
    teacher: nn.Module,
    shared: list,
    tokens: torch.Tensor,
    cfg: GQAConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    monitor: Callable[[nn.Module], float] | None = None,
) -> dict:
    """Train gates + weights for `cfg.train_steps` steps, then export `model` as plain GQA in place.

    `monitor`, if given, is called on the model with every gate closed about 25 times and at the end;
    its values are returned as `curve` (step, seconds, value)."""
    t0 = time.perf_counter()
    low = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if low:  # convert() casts the student to float32 first
        raise UserError(
            f"the GQA fine-tune trains float32 master weights, but the model holds {', '.join(low)}"
        )
    device = next(model.parameters()).device
    head_dim = read_attention(model, arch, 0).head_dim
    n_heads = head_layout(model.config)[2]  # K/V heads of the language model (Gemma-3 nests its config)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    gates = install(model, arch, shared, head_dim, n_heads)
    named = _trainable(model, arch, cfg.train_scope)
    gate_ids = {id(g.log_alpha) for g in gates}
    weights = [p for _, p in named if id(p) not in gate_ids]
    lambdas = nn.Parameter(torch.zeros(2, device=device))
    opt_w = torch.optim.AdamW(weights, lr=cfg.lr, weight_decay=0.0)
    steps, warm = cfg.train_steps, max(1, round(cfg.sparsity_warmup * cfg.train_steps))
    ceiling = cfg.l0_schedule == "ceiling"
    gate_lr = cfg.gate_lr if cfg.gate_lr is not None else min(1.0, max(0.01, 10.0 / warm))
    opt_g = torch.optim.Adam([g.log_alpha for g in gates], lr=gate_lr)
    opt_l = torch.optim.Adam([lambdas], lr=gate_lr, maximize=True)
    gen = torch.Generator().manual_seed(seed)
    precision = cfg.train_precision
    if precision == "auto":
        precision = "bfloat16" if device.type == "cuda" else "float32"
    # what fixes the starting point: a checkpoint only resumes the same conversion of the same model
    start_point = {
        k: getattr(cfg, k)
        for k in (
            "kv_heads",
            "grouping",
            "align",
            "calib_tokens",
            "seq_len",
            "calib_file",
            "restarts",
            "procrustes_iters",
        )
    }
    for key in ("grouping_metric", "grouping_on", "sink_tokens", "l0_schedule"):  # added later: only when set
        if getattr(cfg, key) != getattr(GQAConfig, key):
            start_point[key] = getattr(cfg, key)
    meta = {
        "layers": len(gates),
        "kv_heads_own": n_heads,
        "conversion": start_point,
        "seed": seed,
        "calib_sum": int(tokens.sum()),
        "trained": [n for n, _ in named],
    }
    path = Path(cfg.train_dir) / CKPT if cfg.train_dir else None
    start = 0
    if path is not None and path.is_file():
        state = torch.load(path, map_location=device, weights_only=True)
        if state["meta"] != meta:
            raise UserError(
                f"{path} is a checkpoint of a different conversion; remove it or pick another train_dir"
            )
        with torch.no_grad():
            for n, p in named:
                p.copy_(state["params"][n])
            lambdas.copy_(state["lambdas"])
        for opt, key in ((opt_w, "opt_w"), (opt_g, "opt_g"), (opt_l, "opt_l")):
            opt.load_state_dict(state[key])
        gen.set_state(state["rng"].cpu())  # map_location moved it to the GPU; generators live on the CPU
        start = int(state["step"])

    def save(step: int) -> None:
        if path is None:
            return
        state = {
            "meta": meta,
            "step": step,
            "params": {n: p.detach() for n, p in named},
            "lambdas": lambdas.detach(),
            "opt_w": opt_w.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_l": opt_l.state_dict(),
            "rng": gen.get_state(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")

    losses, history, curve = [], [], []
    every = max(1, (steps - start) // 50)
    watch = max(1, steps // 25)

    def observe(step: int) -> None:  # the monitor sees the model an export after `step` steps would give
        for g in gates:
            g.fix(0.0)
        curve.append({"step": step, "seconds": time.perf_counter() - t0, "value": float(monitor(model))})
        if progress:
            print(
                f"  step {step}/{steps}  monitor {curve[-1]['value']:.4f}  {curve[-1]['seconds']:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    model.eval()  # no dropout; gates are sampled explicitly
    if monitor is not None and start == 0:
        observe(0)
    tty = sys.stderr.isatty()  # a terminal gets a line every 10 steps, a log one every 2%
    for step in range(start, steps):
        rows = torch.arange(step * cfg.train_batch_size, (step + 1) * cfg.train_batch_size) % tokens.shape[0]
        batch = tokens[rows].to(device)
        for group in opt_w.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, steps, cfg.lr_schedule)
        with torch.no_grad(), autocast():
            target_logits = teacher(input_ids=batch, use_cache=False).logits
        for g in gates:  # ceiling: after the warm-up every log-alpha sits at the floor, the gates are closed
            g.fix(0.0) if step >= warm and ceiling else g.sample(gen)
        with autocast():
            student_logits = model(input_ids=batch, use_cache=False).logits
        kl = _kl(student_logits, target_logits)
        target = min(1.0, (step + 1) / warm)  # share of gates that should be closed
        closed = 1 - torch.cat([g.prob_open() for g in gates]).mean()
        gap = closed - target
        loss = kl + lambdas[0] * gap + lambdas[1] * gap * gap
        for opt in (opt_w, opt_g, opt_l):
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in (opt_w, opt_g, opt_l):
            opt.step()
        for g in gates:
            g.clamp_(target) if ceiling else g.bound_()
        losses.append(kl.detach())  # read back only where a line is written: no host sync per step
        if step % every == 0 or step == steps - 1:
            history.append(
                {
                    "step": step + 1,
                    "kl": float(losses[-1]),
                    "closed": float(closed.detach()),
                    "target": target,
                    "lambda": [float(x) for x in lambdas.detach()],
                    "log_alpha_max": max(float(g.log_alpha.detach().max()) for g in gates),
                }
            )
        if progress and ((tty and step % 10 == 0) or step % every == 0 or step == steps - 1):
            print(
                f"  step {step + 1}/{steps}  kl {float(losses[-1]):.4f}  closed {float(closed.detach()):.2f} "
                f"(target {target:.2f})  {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        if (step + 1) % cfg.save_every == 0 or step == steps - 1:
            save(step + 1)
        if monitor is not None and ((step + 1) % watch == 0 or step == steps - 1):
            observe(step + 1)
    open_share = float(torch.cat([g.prob_open() for g in gates]).mean().detach())
    uninstall_as_gqa(model, arch, cfg.kv_heads)
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, True))
    losses = torch.stack(losses).tolist() if losses else []
    last10 = losses[-10:]
    return {
        "steps": steps,
        "resumed_from": start,
        "kl_first": losses[0] if losses else None,
        "kl_last": losses[-1] if losses else None,
        "kl_last10": sum(last10) / len(last10) if losses else None,
        "final_open_probability": open_share,
        "precision": precision,
        "master_dtype": "float32",
        "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule,
        "l0_schedule": cfg.l0_schedule,
        "history": history,
        "curve": curve,
        "seconds": time.perf_counter() - t0,
        "checkpoint": str(path) if path else None,
    }
