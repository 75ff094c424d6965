"""`tensorllm gqa`: multi-head -> grouped-query attention with aligned heads (arXiv 2412.20677).

tensorllm expand-kv smollm2-135m --out runs/smollm2-mha
tensorllm gqa runs/smollm2-mha --kv-heads 3 --out runs/smollm2-gqa3 --calib-file text.txt
tensorllm gqa MODEL --kv-heads 8 --out DIR --train-steps 2000 --device cuda --dtype float32
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tensorllm.cli.common import console, method_options, with_method_flags


def register(app: typer.Typer) -> None:
    app.command("gqa")(with_method_flags(gqa, "compress_flags", only="gqa"))


def gqa(
    model: str = typer.Argument(..., help="Alias, local HF directory, .gguf file or hub id (Llama-family)."),
    kv_heads: int = typer.Option(
        ..., "--kv-heads", help="K/V heads after conversion (divides the query heads)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory: HF checkpoint + recipe.yaml + report.json."
    ),
    grouping: str = typer.Option("similarity", help="similarity | contiguous."),
    align: bool = typer.Option(
        True, "--align/--no-align", help="Fold RoPE-safe head alignment in before merging."
    ),
    calib_tokens: int = typer.Option(32768, help="Calibration tokens (streamed statistics)."),
    calib_file: Path | None = typer.Option(
        None, help="Calibration text: plain text, JSON or JSONL with 'text'."
    ),
    seq_len: int = typer.Option(2048, help="Calibration / fine-tune / evaluation sequence length."),
    eval_tokens: int = typer.Option(
        8192, help="Held-out tokens (after the calibration and fine-tune ones) for perplexity."
    ),
    decode_tokens: int = typer.Option(32, help="New tokens timed for decode speed (0 to skip)."),
    eval_task: list[str] = typer.Option(
        [], "--eval-task", help="Reasoning task scored before and after (repeatable; e.g. wikidata_qa)."
    ),
    eval_split: str = typer.Option("test", help="Split of --eval-task: val | test | all."),
    eval_limit: int | None = typer.Option(None, help="Score only the first N items of that split."),
    train_steps: int = typer.Option(
        0, help="Recovery fine-tune steps (gated distillation); 0 = training-free."
    ),
    train_tokens: int = typer.Option(
        0, help="Fine-tune text: the tokens after the calibration ones (0 = reuse those)."
    ),
    train_batch_size: int = typer.Option(1, help="Fine-tune sequences per step."),
    lr: float = typer.Option(1e-4, help="Fine-tune peak learning rate."),
    lr_schedule: str = typer.Option("cosine", help="cosine (2% warm-up, then down to lr/10) | constant."),
    train_precision: str = typer.Option(
        "auto", help="Fine-tune products: auto (bfloat16 autocast on CUDA), bfloat16, float32."
    ),
    train_scope: str = typer.Option(
        "attention", help="Fine-tuned weights: attention (Q, O, shared K/V) | all."
    ),
    train_dir: Path | None = typer.Option(
        None, help="Fine-tune checkpoints (resumed from); default OUT.train/."
    ),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("auto", help="Load dtype: auto (as stored), float32, bfloat16, float16."),
    seed: int = typer.Option(0),
    method_flags: dict = None,
) -> None:
    """Convert to grouped-query attention; report K/V energy kept, perplexity, KV-cache size, decode speed."""
    from tensorllm.cli.gqa_pipeline import TaskEval, run_gqa
    from tensorllm.recipe import Recipe

    tasks = TaskEval.of(eval_task, eval_split, eval_limit)  # an unknown task fails before any work

    if train_steps and train_dir is None:
        train_dir = out.with_name(out.name + ".train")
    opts = dict(
        kv_heads=kv_heads,
        grouping=grouping,
        align=align,
        calib_tokens=calib_tokens,
        seq_len=seq_len,
        train_steps=train_steps,
        train_tokens=train_tokens,
        train_batch_size=train_batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        train_precision=train_precision,
        train_scope=train_scope,
        calib_file=str(calib_file) if calib_file else None,
        train_dir=str(train_dir) if train_dir else None,
        **method_options("gqa", "compress_flags", method_flags or {}),  # the method's own flags
    )
    recipe = Recipe.single("gqa", dtype=dtype, device=device, seed=seed, **opts)
    path, report = run_gqa(
        model,
        out,
        recipe,
        eval_tokens=eval_tokens,
        decode_tokens=decode_tokens,
        tasks=tasks,
        overwrite=overwrite,
    )
    print_report(report)
    console.print(f"saved checkpoint, recipe.yaml and report.json to [bold]{path}[/]")


def print_report(report: dict) -> None:
    layers = Table(title="gqa: per layer (share of K/V activation energy the merged heads keep)")
    for col in ("layer", "groups", "K kept", "V kept", "K kept unaligned", "V kept unaligned"):
        layers.add_column(col, justify="right")
    for r in report["layers"]:
        groups = " ".join("(" + ",".join(map(str, g)) + ")" for g in r["groups"])
        row = [str(r["layer"]), groups, f"{r['key_energy_kept']:.3f}", f"{r['value_energy_kept']:.3f}"]
        row += [
            f"{r[k]:.3f}" if k in r else "-"
            for k in ("key_energy_kept_unaligned", "value_energy_kept_unaligned")
        ]
        layers.add_row(*row)
    console.print(layers)
    before, after = report["before"], report["after"]
    table = Table(title="gqa: before / after")
    for col in ("", "before", "after"):
        table.add_column(col, justify="right")
    table.add_row("K/V heads", str(before["kv_heads"]), str(after["kv_heads"]))
    table.add_row(
        "KV cache bytes / token",
        f"{before['kv_cache_bytes_per_token']:,}",
        f"{after['kv_cache_bytes_per_token']:,}",
    )
    table.add_row(
        f"held-out perplexity ({report['eval']['held_out_tokens']} tok)",
        f"{before['perplexity']:.3f}",
        f"{after['perplexity']:.3f}",
    )
    if "decode_tokens_per_s" in before:
        table.add_row(
            "decode tokens/s (batch 1)",
            f"{before['decode_tokens_per_s']:.1f}",
            f"{after['decode_tokens_per_s']:.1f}",
        )
    for name, b in before.get("tasks", {}).items():
        a = after["tasks"][name]
        table.add_row(
            f"{name} {b['split']} accuracy % ({b['n']} items)", f"{b['accuracy']:.2f}", f"{a['accuracy']:.2f}"
        )
        table.add_row(f"{name} {b['split']} loss", f"{b['loss']:.4f}", f"{a['loss']:.4f}")
    ft = report["summary"].get("finetune")
    if ft:
        table.add_row(
            "fine-tune KL (first / last 10)",
            f"{ft['kl_first']:.4f}" if ft["kl_first"] is not None else "-",
            f"{ft['kl_last10']:.4f}" if ft["kl_last10"] is not None else "-",
        )
        curve = ft.get("curve") or []
        if len(curve) > 1:
            table.add_row(
                f"fine-tune held-out perplexity (step {curve[0]['step']} / {curve[-1]['step']})",
                f"{curve[0]['value']:.3f}",
                f"{curve[-1]['value']:.3f}",
            )
    table.add_row("seconds (convert)", "", f"{report['seconds']['convert']:.1f}")
    console.print(table)
