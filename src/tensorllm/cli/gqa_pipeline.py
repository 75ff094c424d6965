"""`tensorllm gqa` end to end: load, measure, convert, measure, save checkpoint + recipe + report
(+ finetune.png after a recovery fine-tune).

Held-out perplexity uses the tokens right after the ones the method reads (calibration, then the
fine-tune's `train_tokens`) in the same text, so they never overlap.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tensorllm.archs import head_layout
from tensorllm.base.devices import resolve_device
from tensorllm.base.errors import UserError
from tensorllm.base.files import check_location
from tensorllm.base.versions import versions
from tensorllm.cli.gqa_plot import finetune_png
from tensorllm.eval.evaluate import evaluate
from tensorllm.eval.items import preflight
from tensorllm.eval.measure import decode_tokens_per_s, kv_cache_bytes_per_token, perplexity
from tensorllm.eval.sources import SPLITS
from tensorllm.eval.tasks import TaskSpec, get_task
from tensorllm.methods import registry
from tensorllm.methods.gqa.calibrate import chunk
from tensorllm.methods.gqa.convert import check_convertible
from tensorllm.methods.gqa.method import convert_on_text, text_tokens
from tensorllm.models.io import load_model, preflight_output, save_checkpoint
from tensorllm.recipe import Recipe


@dataclass(frozen=True)
class TaskEval:
    """Reasoning tasks scored before and after the conversion (LASER's protocol, eval/evaluate.py)."""

    tasks: tuple[TaskSpec, ...] = ()
    split: str = "test"
    limit: int | None = None  # the first `limit` items of the split; None: all of them

    @classmethod
    def of(cls, names: list[str] | tuple[str, ...], split: str = "test", limit: int | None = None):
        if split not in SPLITS:
            raise UserError(f"eval split '{split}' is not one of {', '.join(SPLITS)}")
        if limit is not None and limit < 1:
            raise UserError(f"eval limit must be at least 1, got {limit}")
        return cls(tuple(get_task(n) for n in dict.fromkeys(names)), split, limit)  # unknown task: one line


def _measure(model, tokenizer, held_out, decode_tokens: int, batch_size: int, tasks: TaskEval) -> dict:
    out = {
        "kv_heads": head_layout(model.config)[2],
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(model),
        "perplexity": perplexity(model, held_out, batch_size=batch_size),
    }
    if decode_tokens:
        out["decode_tokens_per_s"] = decode_tokens_per_s(model, new_tokens=decode_tokens)
    if tasks.tasks:
        out["tasks"] = {}
        for spec in tasks.tasks:
            r = evaluate(model, tokenizer, spec, tasks.split, tasks.limit, progress=False)
            out["tasks"][spec.name] = {"split": r.split, "n": r.n, "accuracy": r.accuracy, "loss": r.loss}
    return out


def check_measure_options(eval_tokens: int, decode_tokens: int) -> None:
    """Perplexity needs at least one predicted token per row; decode timing 0 (skip) or more new tokens."""
    if eval_tokens < 2:
        raise UserError(f"eval_tokens must be at least 2 (held-out perplexity), got {eval_tokens}")
    if decode_tokens < 0:
        raise UserError(f"decode_tokens must be 0 (skip) or more, got {decode_tokens}")


def run_gqa(
    model_spec: str,
    out: Path,
    recipe: Recipe,
    *,
    eval_tokens: int = 8192,
    decode_tokens: int = 32,
    tasks: TaskEval = TaskEval(),
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, dict]:
    """Convert `model_spec` with the single `gqa` step of `recipe`; returns (output dir, report).
    `tasks`: reasoning tasks scored before and after (`report.json`: before/after `tasks`)."""
    t0 = time.perf_counter()
    check_measure_options(eval_tokens, decode_tokens)
    (step,) = recipe.steps
    cfg = step.config
    preflight_output(out, model_spec, overwrite=overwrite, dtype=recipe.dtype)  # before anything is loaded
    if cfg.train_dir:  # the fine-tune's checkpoints (resumed from when they exist)
        check_location(cfg.train_dir, what="--train-dir")
    loaded = load_model(model_spec, dtype=recipe.dtype, device=recipe.device)
    model, arch = loaded.model, loaded.arch
    check_convertible(model, arch, cfg)  # fail before measuring
    for spec in tasks.tasks:  # a task this model or tokenizer cannot be scored on fails before any work
        preflight(model, loaded.tokenizer, spec, tasks.split, tasks.limit)
    text = text_tokens(loaded.tokenizer, cfg)  # calibration, then fine-tune tokens, then held-out ones
    held_out = chunk(text.ids, eval_tokens, cfg.seq_len, offset=text.used, what="held-out evaluation")
    t_load = time.perf_counter() - t0
    before = _measure(model, loaded.tokenizer, held_out, decode_tokens, cfg.batch_size, tasks)
    t1 = time.perf_counter()
    ctx = registry.RunContext(
        device=resolve_device(recipe.device),
        seed=recipe.seed,
        tokenizer=loaded.tokenizer,
        source=loaded,
        progress=progress,
    )

    def held_out_ppl(m) -> float:  # the fine-tune's curve: the held-out perplexity an export would have
        return perplexity(m, held_out, batch_size=cfg.batch_size)

    # the registered `gqa` step, without re-tokenising
    result = convert_on_text(model, arch, cfg, ctx, text, monitor=held_out_ppl if cfg.train_steps else None)
    t_convert = time.perf_counter() - t1
    after = _measure(model, loaded.tokenizer, held_out, decode_tokens, cfg.batch_size, tasks)
    report = {
        "model": model_spec,
        "architecture": arch.name,
        "recipe": recipe.to_dict(),
        "before": before,
        "after": after,
        "eval": {
            "held_out_tokens": int(held_out.numel()),
            "seq_len": int(held_out.shape[1]),
            "calib_tokens": int(text.calib.numel()),
            "train_tokens": int(text.train.numel()) if text.train is not None else None,
            "decode_new_tokens": decode_tokens,
            "decode_batch": 1,
            "tasks": {"split": tasks.split, "limit": tasks.limit, "names": [t.name for t in tasks.tasks]},
        },
        "layers": result["layers"],
        "summary": result["summary"],
        "seconds": {
            "load_and_tokenise": t_load,
            "convert": t_convert,
            "total_before_save": time.perf_counter() - t0,
        },
        "versions": versions(),
    }
    extra = {"recipe.yaml": recipe.to_yaml(), "report.json": json.dumps(report, indent=2, default=str)}
    if "finetune" in result["summary"]:
        extra["finetune.png"] = finetune_png(
            result["summary"]["finetune"],
            before=before["perplexity"],
            title=f"{model_spec} -> {cfg.kv_heads} K/V heads: recovery fine-tune",
        )
    out = save_checkpoint(loaded, out, overwrite=overwrite, extra_files=extra)
    return out, report
