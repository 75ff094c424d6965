"""The `tensorllm` command. Every command turns a UserError into `error: ...` and exit code 2.

    tensorllm info smollm2-135m
    tensorllm compress smollm2-135m --method tucker --layers 9 --ranks 144,48,4 --out runs/l9
    tensorllm compress MODEL --recipe recipe.yaml --out DIR
    tensorllm expand-kv smollm2-135m --out runs/smollm2-mha
    tensorllm demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tensorllm.errors import UserError
from tensorllm.progress import output_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Structural denoising and compression of transformer attention (TensorLLM, LASER, MHA->GQA).")
console = output_console()

ModelArg = typer.Argument(..., help="Alias (smollm2-135m, minilm-l6), local HF directory, .gguf file or hub id.")


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def parse_ranks(text: str | None):
    """'144,48,4' -> (144, 48, 4); '0.5,0.25,1' -> fractions; 'auto' -> 'auto'."""
    if text is None or text == "auto":
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
        return tuple(float(p) for p in parts)
    except ValueError:
        raise UserError(f"--ranks '{text}' must be integers (144,48,4), fractions (0.5,0.25,1) or auto") from None


def parse_layers_arg(text: str | None):
    if text is None:
        return None
    return text if any(c.isalpha() for c in text) else text.replace(" ", "")


@app.command()
def compress(
    model: str = ModelArg,
    out: Path = typer.Option(..., "--out", help="Output directory (a plain HF checkpoint + recipe.yaml + report.json)."),
    method: Optional[str] = typer.Option(None, help="tucker (default) | laser | gqa; not with --recipe."),
    layers: Optional[str] = typer.Option(None, help="Layers: 9, 0,3,7-9, all."),
    ranks: Optional[str] = typer.Option(None, help="tucker: R1,R2,R3 integers, fractions of each mode, or auto."),
    rate: Optional[float] = typer.Option(None, help="tucker: target compression rate of each layer's attention."),
    variant: Optional[str] = typer.Option(None, help="tucker: multihead (default) | single | trawl."),
    matrix: Optional[str] = typer.Option(None, help="tucker single: q|k|v|o; laser: ffn_in (default), ffn_out, ..."),
    rho: Optional[float] = typer.Option(None, help="laser: keep floor(min(m,n)*rho) singular values."),
    rank: Optional[int] = typer.Option(None, help="laser: explicit rank."),
    recipe: Optional[Path] = typer.Option(None, help="Recipe YAML (steps + dtype/device/seed) instead of the flags."),
    dtype: str = typer.Option("auto", help="Load dtype: auto (as stored), float32, bfloat16, float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    trust_remote_code: bool = typer.Option(False, help="Allow the checkpoint's own Python code to run."),
    allow_pickle: bool = typer.Option(False, help="Allow pickle (.bin) weights, which can run arbitrary code."),
) -> None:
    """Apply a method (or a recipe of several) and save a plain checkpoint with its recipe and report."""
    from tensorllm.api import compress as run
    from tensorllm.models.io import check_output_dir, load_model, save_checkpoint
    from tensorllm.recipe import Recipe

    step_flags = dict(method=method, layers=layers, ranks=ranks, rate=rate, variant=variant, matrix=matrix,
                      rho=rho, rank=rank)
    if recipe is not None:
        given = [f"--{k}" for k, v in step_flags.items() if v is not None]
        if given:  # silently ignoring them would compress something other than what the user asked for
            raise UserError(f"--recipe cannot be combined with {', '.join(given)}; put them in the recipe")
        rec = Recipe.load(recipe)
    else:
        opts = {k: v for k, v in dict(layers=parse_layers_arg(layers), ranks=parse_ranks(ranks), rate=rate,
                                      variant=variant, matrix=matrix, rho=rho, rank=rank).items() if v is not None}
        rec = Recipe.single(method or "tucker", dtype=dtype, device=device, seed=seed, **opts)
    loaded = load_model(model, dtype=rec.dtype, device=rec.device, trust_remote_code=trust_remote_code,
                        allow_pickle=allow_pickle)
    check_output_dir(out, [loaded.path], overwrite)
    _, report = run(loaded, rec)
    out = save_checkpoint(loaded, out, overwrite=overwrite,
                          extra_files={"recipe.yaml": rec.to_yaml(), "report.json": report.to_json()})
    print_step_tables(report.steps)
    console.print(f"saved checkpoint, recipe.yaml and report.json to [bold]{out}[/]")


def print_step_tables(steps: list[dict]) -> None:
    for step in steps:
        table = Table(title=f"{step['method']}  ({step['seconds']:.1f} s)")
        for col in ("layer", "ranks", "params before", "params after", "rate", "rel. error", "seconds"):
            table.add_column(col, justify="right")
        for r in step["layers"]:
            ranks = r.get("ranks", r.get("rank", ""))
            table.add_row(str(r["layer"]), ",".join(map(str, ranks)) if isinstance(ranks, list) else str(ranks),
                          f"{r['params_before']:,}", f"{r['params_after']:,}", f"{r['compression_rate']:.2f}x",
                          f"{r['rel_error']:.4f}", f"{r['seconds']:.2f}")
        console.print(table)


@app.command()
def info(model: str = ModelArg, as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
         trust_remote_code: bool = typer.Option(False), allow_pickle: bool = typer.Option(False)) -> None:
    """Architecture, head layout, and per-layer attention tensor shapes and parameter counts."""
    from tensorllm.inspect import describe

    desc = describe(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if as_json:
        print(json.dumps(desc, indent=2))
        return
    top = Table(title=f"{model}", show_header=False)
    for k, v in desc["model"].items():
        top.add_row(k, str(v))
    console.print(top)
    table = Table(title="attention per layer")
    for col in ("layer", "q", "k", "v", "o", "tucker tensor", "attn params", "ffn params"):
        table.add_column(col, justify="right")
    for r in desc["layers"]:
        table.add_row(str(r["layer"]), *("x".join(map(str, r[n])) for n in ("q", "k", "v", "o", "tensor")),
                      f"{r['attn_params']:,}", f"{r['ffn_params']:,}")
    console.print(table)


@app.command("expand-kv")
def expand_kv_cmd(model: str = ModelArg, out: Path = typer.Option(..., "--out"),
                  overwrite: bool = typer.Option(False), dtype: str = typer.Option("auto"),
                  trust_remote_code: bool = typer.Option(False), allow_pickle: bool = typer.Option(False)) -> None:
    """Grouped-query -> equivalent multi-head checkpoint (each K/V head repeated for its query heads)."""
    from tensorllm.models.expand_kv import expand_kv
    from tensorllm.models.io import check_output_dir, load_model, save_checkpoint
    from tensorllm.report import versions

    loaded = load_model(model, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    check_output_dir(out, [loaded.path], overwrite)
    old = expand_kv(loaded.model, loaded.arch)
    heads = loaded.model.config.num_attention_heads
    report = {"source": model, "kv_heads_before": old, "kv_heads_after": heads, "versions": versions()}
    out = save_checkpoint(loaded, out, overwrite=overwrite, extra_files={"report.json": json.dumps(report, indent=2)})
    console.print(f"expanded {old} -> {heads} K/V heads; saved to [bold]{out}[/]")


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="Where to save the compressed checkpoint."),
         layer: int = typer.Option(16, help="Default: the best layer of our GPU search (BENCHMARKS.md)."),
         ranks: str = typer.Option("288,48,4"),
         eval_items: int = typer.Option(200, help="WikidataQA items evaluated before/after (0 to skip)."),
         overwrite: bool = typer.Option(True)) -> None:
    """The main job on the defaults: SmolLM2-135M, offline, one layer compressed, before/after side by side."""
    from tensorllm.demo import run_demo

    run_demo(out=out, layer=layer, ranks=parse_ranks(ranks), eval_items=eval_items, overwrite=overwrite, console=console)


_EXTENSIONS = ("cli_eval", "cli_gqa", "cli_search")


def _register_extensions() -> None:
    import importlib

    for name in _EXTENSIONS:
        importlib.import_module(f"tensorllm.{name}").register(app)


def main() -> None:
    _quiet_transformers()
    try:
        _register_extensions()
        app(standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click's usage errors (typer vendors click) arrive here in non-standalone mode
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            if exc.format_message():
                print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
