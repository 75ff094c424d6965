"""`tensorllm compress` and `tensorllm expand-kv`: apply a recipe (or expand K/V heads) and save.

tensorllm compress smollm2-135m --method tucker --layers 9 --ranks 144,48,4 --out runs/l9
tensorllm compress MODEL --recipe recipe.yaml --out DIR
tensorllm expand-kv smollm2-135m --out runs/smollm2-mha
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from tensorllm.base.errors import UserError
from tensorllm.cli.common import ModelArg, console, method_options, with_method_flags
from tensorllm.cli.export import check_format, compress_factorised, storage_line
from tensorllm.methods import DEFAULT as DEFAULT_METHOD
from tensorllm.methods import registry


def parse_layers_arg(text: str | None):
    if text is None:
        return None
    return text if any(c.isalpha() for c in text) else text.replace(" ", "")


def compress(
    model: str = ModelArg,
    out: Path = typer.Option(
        ..., "--out", help="Output directory (a plain HF checkpoint + recipe.yaml + report.json)."
    ),
    method: str | None = typer.Option(
        None, help=f"{' | '.join(registry.names())} (default {DEFAULT_METHOD}); not with --recipe."
    ),
    layers: str | None = typer.Option(None, help="Layers: 9, 0,3,7-9, all."),
    recipe: Path | None = typer.Option(
        None, help="Recipe YAML (steps + dtype/device/seed) instead of the flags."
    ),
    dtype: str = typer.Option("auto", help="Load dtype: auto (as stored), float32, bfloat16, float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    trust_remote_code: bool = typer.Option(False, help="Allow the checkpoint's own Python code to run."),
    allow_pickle: bool = typer.Option(
        False, help="Allow pickle (.bin) weights, which can run arbitrary code."
    ),
    stream: bool | None = typer.Option(
        None,
        "--stream/--no-stream",
        help="Stream layer by layer from the safetensors shards (bounded memory, resumable); "
        "default: when every step can and the weights would not fit in memory.",
    ),
    max_shard_size: str = typer.Option("5GB", help="--stream: the largest output shard."),
    fmt: str = typer.Option(
        "dense",
        "--format",
        help="dense: a plain checkpoint | factorised: the compressed modules keep their factors "
        "(load with tensorllm.load, or transformers with trust_remote_code=True; export --dense).",
    ),
    recover: int | None = typer.Option(
        None,
        "--recover",
        help="Then distil the original model into the compressed one for this many steps, training only "
        "the factors (float32).",
    ),
    method_flags: dict = None,
) -> None:
    """Apply a method (or a recipe of several) and save a plain checkpoint with its recipe and report."""
    from tensorllm.api import compress as run
    from tensorllm.models.io import load_model, preflight_output, save_checkpoint
    from tensorllm.recipe import Recipe

    if recipe is not None:
        given = [
            f"--{k}" for k, v in dict(method=method, layers=layers, **method_flags).items() if v is not None
        ]
        if given:  # silently ignoring them would compress something other than what the user asked for
            raise UserError(f"--recipe cannot be combined with {', '.join(given)}; put them in the recipe")
        rec = Recipe.load(recipe)
    else:
        method = method or DEFAULT_METHOD
        opts = method_options(method, "compress_flags", method_flags)
        if layers is not None:
            opts["layers"] = parse_layers_arg(layers)
        rec = Recipe.single(method, dtype=dtype, device=device, seed=seed, **opts)
    check_format(fmt, rec, recover)  # a step with no factorised form is refused before any work
    if fmt == "factorised" or recover is not None:
        if stream:
            raise UserError("--format factorised / --recover do not stream: pass --no-stream")
        stream = False
    # the output is checked before anything is loaded (or streamed)
    preflight_output(out, model, overwrite=overwrite, dtype=rec.dtype)
    if stream is None:
        from tensorllm.streamed import stream_reason

        reason = stream_reason(model, rec)
        if reason:
            console.print(f"streaming layer by layer: {reason} (--no-stream loads it whole)")
        stream = reason is not None
    if stream:
        return compress_streamed_cmd(model, rec, out, overwrite, max_shard_size)
    loaded = load_model(
        model,
        dtype=rec.dtype,
        device=rec.device,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    if fmt == "factorised" or recover is not None:
        report, out = compress_factorised(loaded, rec, out, overwrite=overwrite, fmt=fmt, recover=recover)
        print_step_tables(report.steps)
        console.print(storage_line(report.extra["factorised"]))
        if recover is not None:
            r = report.extra["recovery"]
            console.print(f"recovery: {r['steps']} steps, KL {r['kl_first']:.4f} -> {r['kl_last_tenth']:.4f}")
        console.print(f"saved the {fmt} checkpoint, recipe.yaml and report.json to [bold]{out}[/]")
        return
    _, report = run(loaded, rec)
    out = save_checkpoint(
        loaded,
        out,
        overwrite=overwrite,
        extra_files={"recipe.yaml": rec.to_yaml(), "report.json": report.to_json()},
    )
    print_step_tables(report.steps)
    console.print(f"saved checkpoint, recipe.yaml and report.json to [bold]{out}[/]")


def compress_streamed_cmd(model: str, rec, out: Path, overwrite: bool, max_shard_size: str) -> None:
    from tensorllm.streamed import compress_streamed

    out, report = compress_streamed(model, rec, out, overwrite=overwrite, max_shard_size=max_shard_size)
    print_step_tables(report.steps)
    t = report.extra["stream"]
    console.print(
        f"streamed: read {t['read_s']:.1f} s, compute {t['compute_s']:.1f} s, write {t['write_s']:.1f} s, "
        f"copy {t['copy_s']:.1f} s; peak RSS {t['peak_rss_bytes'] / 2**30:.2f} GiB"
    )
    console.print(f"saved checkpoint, recipe.yaml and report.json to [bold]{out}[/]")


def print_step_tables(steps: list[dict]) -> None:
    for step in steps:
        table = Table(title=f"{step['method']}  ({step['seconds']:.1f} s)")
        for col in ("layer", "ranks", "params before", "params after", "rate", "rel. error", "seconds"):
            table.add_column(col, justify="right")
        for r in step["layers"]:
            ranks = r.get("ranks", r.get("rank", ""))
            table.add_row(
                str(r["layer"]),
                ",".join(map(str, ranks)) if isinstance(ranks, list) else str(ranks),
                f"{r['params_before']:,}",
                f"{r['params_after']:,}",
                f"{r['compression_rate']:.2f}x",
                f"{r['rel_error']:.4f}",
                f"{r['seconds']:.2f}",
            )
        console.print(table)


def expand_kv_cmd(
    model: str = ModelArg,
    out: Path = typer.Option(..., "--out"),
    overwrite: bool = typer.Option(False),
    dtype: str = typer.Option("auto"),
    trust_remote_code: bool = typer.Option(False),
    allow_pickle: bool = typer.Option(False),
) -> None:
    """Grouped-query -> equivalent multi-head checkpoint (each K/V head repeated for its query heads)."""
    from tensorllm.base.versions import versions
    from tensorllm.models.expand_kv import expand_kv
    from tensorllm.models.io import load_model, preflight_output, save_checkpoint

    preflight_output(out, model, overwrite=overwrite, dtype=dtype)
    loaded = load_model(
        model, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    old = expand_kv(loaded.model, loaded.arch)
    heads = loaded.model.config.num_attention_heads
    report = {"source": model, "kv_heads_before": old, "kv_heads_after": heads, "versions": versions()}
    out = save_checkpoint(
        loaded, out, overwrite=overwrite, extra_files={"report.json": json.dumps(report, indent=2)}
    )
    console.print(f"expanded {old} -> {heads} K/V heads; saved to [bold]{out}[/]")


def register(app: typer.Typer) -> None:
    app.command("compress")(with_method_flags(compress, "compress_flags"))
    app.command("expand-kv")(expand_kv_cmd)
