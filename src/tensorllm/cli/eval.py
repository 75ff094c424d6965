"""`tensorllm eval` and `tensorllm data fetch` (registered on the main app by cli.py).

tensorllm data fetch                                   # BIG-bench task files from PyPI, cached
tensorllm data fetch --sdist ~/Downloads/bigbench-1.0.0.tar.gz
tensorllm eval smollm2-135m --task wikidata_qa --split val --limit 500 --json out/wd.json
tensorllm eval smollm2-135m --task wikidata_qa,fever_bigbench,perplexity --split test
tensorllm eval smollm2-135m --task hotpotqa --data hotpot.jsonl --answer-mode continuation
tensorllm eval smollm2-135m --lm-eval arc_easy,hellaswag --limit 200
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.table import Table

from tensorllm.base.errors import UserError
from tensorllm.base.versions import versions
from tensorllm.cli.common import console


def data_fetch(
    sdist: Path | None = typer.Option(
        None,
        "--sdist",
        help="A local bigbench-1.0.0.tar.gz instead of downloading it (also: env TENSORLLM_BIGBENCH_SDIST).",
    ),
) -> None:
    """Fetch the BIG-bench task files (WikidataQA, FEVER, English paragraphs) into the cache."""
    from tensorllm.data.bigbench import MEMBERS, fetch_bigbench

    t0 = time.perf_counter()
    res = fetch_bigbench(sdist)
    what = (
        "already cached"
        if not res.fetched
        else f"fetched from {res.source} in {time.perf_counter() - t0:.1f} s"
    )
    console.print(f"BIG-bench task files {what}: [bold]{res.directory}[/]")
    for key, rel in MEMBERS.items():
        console.print(f"  {key:12s} {rel}")


def eval_cmd(
    model: str = typer.Argument(
        ..., help="Alias (smollm2-135m, minilm-l6), local HF directory, .gguf file or hub id."
    ),
    task: str | None = typer.Option(
        None,
        help="Task(s), comma-separated: wikidata_qa, fever_bigbench, epistemic_reasoning, fever, "
        "hotpotqa, bios_profession, perplexity.",
    ),
    split: str = typer.Option("val", help="val (first 20%), test (remaining 80%) or all."),
    limit: int | None = typer.Option(None, help="Use the first N examples of the split."),
    batch_size: int = typer.Option(256, help="Examples per batch (generation and scoring)."),
    answer_mode: str = typer.Option(
        "faithful",
        help="Generative accuracy: faithful (decode prompt + continuation, "
        "as LASER's code) | continuation (new tokens only).",
    ),
    data: Path | None = typer.Option(None, help="Local JSON/JSONL task file instead of the built-in source."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON to this file."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option(
        "auto", help="auto (bfloat16 on CUDA, as stored on CPU), float32, bfloat16, float16."
    ),
    device_map: str | None = typer.Option(
        None,
        help="Spread a model too large for one GPU over all GPUs "
        "(accelerate): auto, balanced, balanced_low_0, sequential.",
    ),
    lm_eval: str | None = typer.Option(
        None, "--lm-eval", help="lm-evaluation-harness task(s), comma-separated (needs the lm-eval extra)."
    ),
    lm_eval_include: Path | None = typer.Option(None, help="Folder of your own lm-eval task YAML files."),
    num_fewshot: int | None = typer.Option(None, help="lm-eval: few-shot examples per prompt."),
    keep_examples: bool = typer.Option(False, help="Put every example's prediction and loss into --json."),
    trust_remote_code: bool = typer.Option(False, help="Allow the checkpoint's own Python code to run."),
    allow_pickle: bool = typer.Option(
        False, help="Allow pickle (.bin) weights, which can run arbitrary code."
    ),
) -> None:
    """Evaluate a model with LASER's protocol (accuracy, gold-answer loss) and/or lm-eval tasks."""
    from tensorllm.eval import evaluate, get_task, load_task
    from tensorllm.eval.evaluate import check_answer_mode
    from tensorllm.eval.sources import SPLITS

    tasks = [t.strip() for t in (task or "").split(",") if t.strip()]
    if not tasks and not lm_eval:
        raise UserError("nothing to evaluate: pass --task T and/or --lm-eval TASKS")
    for t in tasks:
        get_task(t)
    check_answer_mode(answer_mode)
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be a positive number of examples, got {limit}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    if data is not None and len(tasks) != 1:
        raise UserError("--data belongs to one task; pass exactly one --task with it")
    if json_out is not None:
        inputs = [p for p in (data, lm_eval_include) if p is not None and p.exists()]
        _check_json_out(json_out, model, [p for p in inputs if p.is_file() or p == lm_eval_include])
    if lm_eval:
        from tensorllm.eval.lm_eval_bridge import check_args, require_lm_eval

        check_args(lm_eval.split(","), limit=limit, num_fewshot=num_fewshot, include_path=lm_eval_include)
        require_lm_eval()
    for t in tasks:  # bad data fails before the model loads (the parsed file is cached for evaluate)
        load_task(get_task(t), data)

    loaded = _load(model, device, dtype, trust_remote_code, allow_pickle, device_map)
    progress = sys.stderr.isatty()
    results = [
        evaluate(
            loaded.model,
            loaded.tokenizer,
            t,
            split=split,
            limit=limit,
            batch_size=batch_size,
            answer_mode=answer_mode,
            data=data,
            keep_examples=keep_examples,
            progress=progress,
        )
        for t in tasks
    ]
    harness = None
    if lm_eval:
        from tensorllm.eval.lm_eval_bridge import run_lm_eval

        harness = run_lm_eval(
            loaded.model,
            loaded.tokenizer,
            lm_eval.split(","),
            batch_size=min(batch_size, 64),
            limit=limit,
            num_fewshot=num_fewshot,
            include_path=str(lm_eval_include) if lm_eval_include else None,
        )
    if results:
        console.print(_table(model, results))
    if harness:
        console.print(_harness_table(harness))
    if json_out is not None:
        from tensorllm.base.files import atomic_write_text

        doc = {
            "model": model,
            "device": str(next(loaded.model.parameters()).device),
            "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
            "results": [r.to_dict() for r in results],
            "lm_eval": harness,
            "versions": versions(),
        }
        atomic_write_text(json_out, json.dumps(doc, indent=2) + "\n")  # one line if the write fails
        console.print(f"wrote [bold]{json_out}[/]")


def _check_json_out(path: Path, model: str, inputs: list) -> None:
    """Before anything loads: --json FILE can be created there (not a directory, in a folder that can be
    written), and is neither the model, inside its directory, nor an input file (or in an input folder)."""
    from tensorllm.base.files import check_location
    from tensorllm.models.io import check_inputs_untouched, input_path

    check_location(path, what="--json", is_dir=False)
    check_inputs_untouched(path, [input_path(model), *inputs], what="--json")


def _load(
    model: str,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    allow_pickle: bool,
    device_map: str | None = None,
):
    from tensorllm.base.devices import eval_dtype, resolve_device
    from tensorllm.models.io import load_model

    return load_model(
        model,
        dtype=eval_dtype(dtype, resolve_device(device)),
        device=device,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        device_map=device_map,
    )


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _table(model: str, results) -> Table:
    how = "; ".join(
        dict.fromkeys(
            f"{r.task}: {r.metric}" + (f" ({r.answer_mode})" if r.answer_mode else "") for r in results
        )
    )
    table = Table(title=f"{model}: LASER-protocol evaluation", caption=f"accuracy in percent; {how}")
    for col in ("task", "split", "n", "acc %", "loss", "ppl", "seconds"):
        table.add_column(col, justify="left" if col in ("task", "split") else "right", no_wrap=True)
    for r in results:
        table.add_row(
            r.task,
            r.split,
            str(r.n),
            _fmt(r.accuracy, ".2f"),
            _fmt(r.loss, ".4f"),
            _fmt(r.perplexity, ".2f"),
            f"{r.seconds:.1f}",
        )
    return table


def _harness_table(harness: dict) -> Table:
    table = Table(title="lm-evaluation-harness")
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for task, metrics in harness.get("results", {}).items():
        for key, value in metrics.items():
            if key in ("alias", "name", "sample_len") or "_stderr" in key:
                continue
            table.add_row(task, key, _fmt(value, ".4f") if isinstance(value, float) else str(value))
    return table


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(no_args_is_help=True, help="Evaluation data (BIG-bench task files from PyPI).")
    data_app.command("fetch")(data_fetch)
    app.add_typer(data_app, name="data")
    app.command("eval")(eval_cmd)
