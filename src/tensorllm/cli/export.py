"""`tensorllm export`: a factorised checkpoint as a standard dense one, for runtimes that need one.

    tensorllm export runs/f --dense --out runs/f-dense

`compress_factorised` is `tensorllm compress ... --format factorised`: the recipe runs as for a dense
checkpoint while every step keeps its factors, and the factors are what is written.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tensorllm.base.errors import UserError
from tensorllm.cli.common import console

FORMATS = ("dense", "factorised")


def check_format(fmt: str, rec) -> None:
    """Refuse an unknown --format, or a recipe with a step that has no factorised form (before any work)."""
    from tensorllm.methods import factorised, registry

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if fmt == "factorised":
        factorised.check_steps(rec.steps, [registry.get(s.method) for s in rec.steps])


def compress_factorised(loaded, rec, out: Path, *, overwrite: bool):
    """Run `rec` on `loaded` keeping the factors, write the factorised checkpoint; (report, out)."""
    from tensorllm.api import compress as run
    from tensorllm.archs import blocks
    from tensorllm.methods import factorised, registry
    from tensorllm.runtime.factorised import factorise, save_factorised

    n_layers = len(blocks(loaded.model, loaded.arch))
    factorised.check_steps(rec.steps, [registry.get(s.method) for s in rec.steps], loaded.arch, n_layers)
    kept: list = []
    _, report = run(loaded, rec, factors=kept)
    spec, summary = factorise(loaded, kept)
    report.extra["format"] = "factorised"
    report.extra["factorised"] = summary
    files = {"recipe.yaml": rec.to_yaml(), "report.json": report.to_json()}
    out = save_factorised(loaded, spec, out, overwrite=overwrite, extra_files=files)
    return report, out


def storage_line(summary: dict) -> str:
    return (
        f"factorised: {summary['modules']} modules, {summary['dense_params']:,} dense parameters -> "
        f"{summary['factor_params']:,} in factors ({summary['rate']:.2f}x; "
        f"{summary['dense_bytes'] / 2**20:.1f} -> {summary['factor_bytes'] / 2**20:.1f} MiB)"
    )


def export_cmd(
    path: Path = typer.Argument(..., help="A factorised checkpoint (compress --format factorised)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    dense: bool = typer.Option(False, "--dense", help="Write the dense rebuild as a standard checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Export a factorised checkpoint (today: --dense, the standard checkpoint of the same weights)."""
    from tensorllm.models.io import preflight_output
    from tensorllm.runtime.factorised_load import export_dense

    if not dense:
        raise UserError("tensorllm export needs --dense (the one export so far: a standard dense checkpoint)")
    preflight_output(out, str(path), overwrite=overwrite)  # before anything loads (the estimate: its size)
    out = export_dense(path, out, overwrite=overwrite)
    console.print(f"saved the dense checkpoint (with recipe.yaml and report.json) to [bold]{out}[/]")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
