"""`tensorllm export`: a factorised checkpoint as a standard dense one, for runtimes that need one.

    tensorllm export runs/f --dense --out runs/f-dense

`compress_factorised` is `tensorllm compress ... --format factorised` (and `--recover`): the recipe runs
as for a dense checkpoint while every step keeps its factors, and the factors are what is written.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tensorllm.base.errors import UserError
from tensorllm.cli.common import console

FORMATS = ("dense", "factorised")


def check_format(fmt: str, rec, recover: int | None = None) -> None:
    """Refuse an unknown --format, or (factorised, or --recover, which trains the factors) a recipe with a
    step that has no factorised form: before any work."""
    from tensorllm.methods import factorised, registry

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if recover is not None and recover < 1:
        raise UserError(f"--recover takes a number of steps >= 1, got {recover}")
    if fmt == "factorised" or recover is not None:
        factorised.check_steps(rec.steps, [registry.get(s.method) for s in rec.steps])


RECOVER_BATCH = 4  # sequences of 512 tokens per recovery step


def compress_factorised(
    loaded, rec, out: Path, *, overwrite: bool, fmt: str = "factorised", recover: int | None = None
):
    """Run `rec` on `loaded` keeping the factors; with `recover`, distil the original into the factors
    (runtime/recover.py); write the factorised checkpoint (or, fmt dense, the product of the factors as
    a plain one). Returns (report, out)."""
    import copy

    from tensorllm.api import compress as run
    from tensorllm.archs import blocks
    from tensorllm.methods import factorised, registry, whiten
    from tensorllm.models.io import save_checkpoint
    from tensorllm.runtime.factorised import factorise, save_factorised
    from tensorllm.runtime.factorised_load import densify
    from tensorllm.runtime.recover import recover as distil

    n_layers = len(blocks(loaded.model, loaded.arch))
    factorised.check_steps(rec.steps, [registry.get(s.method) for s in rec.steps], loaded.arch, n_layers)
    teacher = copy.deepcopy(loaded.model) if recover else None
    kept: list = []
    _, report = run(loaded, rec, factors=kept)
    spec, summary = factorise(loaded, kept)
    report.extra["format"] = fmt
    report.extra["factorised"] = summary
    if recover:
        n_tokens = min(recover * RECOVER_BATCH * whiten.SEQ_LEN, 1 << 17)  # the text repeats beyond that
        tokens = whiten.calibration_tokens(loaded.tokenizer, n_tokens, None)
        report.extra["recovery"] = distil(
            loaded.model, teacher, spec, tokens, steps=recover, batch_size=RECOVER_BATCH, seed=rec.seed
        )
        del teacher
    files = {"recipe.yaml": rec.to_yaml(), "report.json": report.to_json()}
    if fmt == "factorised":
        return report, save_factorised(loaded, spec, out, overwrite=overwrite, extra_files=files)
    densify(loaded.model, spec)  # the trained factors' product, in the model's own modules
    return report, save_checkpoint(loaded, out, overwrite=overwrite, extra_files=files)


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
