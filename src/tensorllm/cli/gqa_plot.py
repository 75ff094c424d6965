"""finetune.png beside a `tensorllm gqa --train-steps` checkpoint: how the recovery fine-tune went."""

from __future__ import annotations

import io


def finetune_png(finetune: dict, *, before: float | None = None, title: str = "") -> bytes:
    """Two panels: held-out perplexity of the model an export would give (`finetune["curve"]`) with the
    unconverted model's `before` as a line, and the training KL with the share of closed gates
    (`finetune["history"]`), both against the step. Returns PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    curve = finetune.get("curve") or []
    if curve:
        left.plot([c["step"] for c in curve], [c["value"] for c in curve], marker=".", label="GQA export")
    if before is not None:
        left.axhline(before, color="k", lw=0.8, label=f"before conversion {before:.2f}")
    left.set_yscale("log")
    left.set(xlabel="fine-tune step", ylabel="held-out perplexity", title="held-out perplexity")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    hist = finetune.get("history") or []
    steps = [h["step"] for h in hist]
    right.plot(steps, [h["kl"] for h in hist], color="tab:red", label="KL to the original")
    right.set(xlabel="fine-tune step", ylabel="KL (training batch)", title="distillation")
    right.set_yscale("log")
    gates = right.twinx()
    gates.plot(steps, [h["closed"] for h in hist], color="tab:gray", ls="--", label="gates closed")
    gates.plot(steps, [h["target"] for h in hist], color="tab:gray", ls=":", label="target")
    gates.set_ylabel("share of gates closed")
    gates.set_ylim(-0.02, 1.02)
    lines = right.get_lines() + gates.get_lines()
    right.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
