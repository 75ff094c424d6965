"""`tensorllm search`: a resumable layer x rank search (registered on the main app by cli.py).

    tensorllm search smollm2-135m --task wikidata_qa --method tucker --layers all \\
        --ranks "144,48,4;0.5,0.5,1;auto" --store runs/s-tucker --limit-val 500
    tensorllm search smollm2-135m --task wikidata_qa --method laser --rhos 0.9,0.5,0.1,0.01 \\
        --matrix up --store runs/s-laser
    tensorllm search smollm2-135m --task wikidata_qa --method hybrid \\
        --from runs/s-tucker --from runs/s-laser --top-k 3 --store runs/s-hybrid
    tensorllm search ... --gpus 4                                  # 4 processes, one GPU each
    torchrun --nproc-per-node 4 -m tensorllm.cli search ...       # the same, launched by torchrun

    tensorllm search ... --exhaustive                              # every configuration on every item
    tensorllm search ... --select-by exact --race-first 400        # exact match; a larger first slice

A search races by default (race.py): configurations behind the leader on the first items are
dropped, the rest scored on more. Rerunning a command resumes it from its --store (a racing store
with the same racing options, an exhaustive one with --exhaustive).
"""

from __future__ import annotations

from pathlib import Path

import typer

from tensorllm.cli.common import method_options, with_method_flags
from tensorllm.methods import DEFAULT as DEFAULT_METHOD
from tensorllm.search.runner import search_methods


def search(
    model: str = typer.Argument(..., help="Alias (smollm2-135m), local HF directory, .gguf file or hub id."),
    task: str = typer.Option(
        ...,
        help="wikidata_qa, fever_bigbench, epistemic_reasoning, fever, hotpotqa, bios_profession, "
        "perplexity.",
    ),
    store: Path = typer.Option(
        ..., help="Directory of the results; rerunning the same command resumes from it."
    ),
    method: str = typer.Option(DEFAULT_METHOD, help=" | ".join(search_methods()) + "."),
    layers: str = typer.Option("all", help="Layers (rows of the grid): 9, 0,3,7-9, all."),
    from_: list[Path] | None = typer.Option(
        None, "--from", help="hybrid: a store of an earlier search (repeat; the top-k of each are combined)."
    ),
    recipe: list[Path] | None = typer.Option(
        None, help="hybrid: a recipe file, one configuration each (repeat)."
    ),
    top_k: int = typer.Option(3, help="hybrid: configurations taken from each --from store."),
    data: Path | None = typer.Option(None, help="Local JSON/JSONL task file instead of the built-in source."),
    limit_val: int | None = typer.Option(None, help="Use the first N validation examples."),
    limit_test: int | None = typer.Option(None, help="Use the first N test examples."),
    batch_size: int = typer.Option(256, help="Evaluation batch size."),
    answer_mode: str = typer.Option(
        "faithful", help="Generative accuracy: faithful (LASER's code) | continuation."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda (with --gpus N: one GPU per process)."),
    dtype: str = typer.Option(
        "auto", help="Load dtype: auto (bfloat16 on CUDA, as stored on CPU), float32, bfloat16, float16."
    ),
    expand_kv: bool = typer.Option(False, help="Expand grouped-query K/V heads to multi-head after loading."),
    gpus: int = typer.Option(
        1,
        "--gpus",
        "--nproc",
        help="Processes, one per GPU (NCCL); with --device cpu, "
        "CPU processes (gloo). Ignored under torchrun, which sets the world itself.",
    ),
    threads: int | None = typer.Option(None, help="CPU threads per process (default: cores / processes)."),
    time_budget: float | None = typer.Option(
        None, help="Stop starting evaluations after this many seconds (partial report; rerun to continue)."
    ),
    seed: int = typer.Option(0),
    trust_remote_code: bool = typer.Option(False, help="Allow the checkpoint's own Python code to run."),
    allow_pickle: bool = typer.Option(
        False, help="Allow pickle (.bin) weights, which can run arbitrary code."
    ),
    select_by: str = typer.Option(
        "accuracy",
        help="Selection metric: accuracy (the answer mode's containment, or label accuracy) | faithful | "
        "continuation | exact (first answer span) | loss. Ties: lower loss.",
    ),
    exhaustive: bool = typer.Option(
        False, help="Score every configuration on the whole validation split (no racing)."
    ),
    race_first: int | None = typer.Option(
        None, help="Racing: items of the first slice (default: n/16, at least 100)."
    ),
    race_eta: float | None = typer.Option(None, help="Racing: each slice this many times the last (2)."),
    race_alpha: float | None = typer.Option(
        None, help="Racing: drop a configuration behind the leader at this one-sided paired p (0.01)."
    ),
    race_finalists: int | None = typer.Option(
        None, help="Racing: the best this many are never dropped, and are scored on the whole split (3)."
    ),
    report_on: str | None = typer.Option(
        None, help="Other tasks (comma list) whose test splits score the baseline and the chosen edits."
    ),
    select_on: str | None = typer.Option(
        None,
        help="Select on these tasks' validation splits (comma list of --task and --report-on tasks; several: "
        "the best mean validation accuracy; needs --exhaustive). Default: --task.",
    ),
    side_effects: bool = typer.Option(
        False,
        help="Also score the chosen edits on the other offline tasks (perplexity, fever_bigbench, "
        "epistemic_reasoning, wikidata_qa) and show greedy generations beside the baseline's.",
    ),
    reference: bool = typer.Option(
        True,
        help="Keep the unedited model's hidden states along each validation item's prompt + gold answer, so "
        "that a configuration's loss pass starts at its first edited layer (the same results). "
        "--no-reference runs every layer.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print report.json to stdout at the end."),
    method_flags: dict = None,
) -> None:
    """Race a grid of layer x rank configurations on validation (or score all: --exhaustive), pick the
    best, test it, report with paired statistics."""
    import json

    from tensorllm.search.runner import HYBRID, SearchSpec, run_search

    options = method_options(method, "search_flags", method_flags) if method != HYBRID else {}
    spec = SearchSpec(
        model=model,
        task=task,
        store=str(store),
        method=method,
        layers=layers,
        options=options,
        sources=tuple(str(p) for p in from_ or ()),
        recipes=tuple(str(p) for p in recipe or ()),
        top_k=top_k,
        data=str(data) if data else None,
        limit_val=limit_val,
        limit_test=limit_test,
        batch_size=batch_size,
        answer_mode=answer_mode,
        device=device,
        dtype=dtype,
        expand_kv=expand_kv,
        gpus=gpus,
        threads=threads,
        time_budget=time_budget,
        seed=seed,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        select_by=select_by,
        exhaustive=exhaustive,
        race_first=race_first,
        race_eta=race_eta,
        race_alpha=race_alpha,
        race_finalists=race_finalists,
        report_on=_names(report_on),
        select_on=_names(select_on),
        side_effects=side_effects,
        reference=reference,
    )
    report = run_search(spec)
    if report is None:  # a rank other than 0: rank 0 prints
        return
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_summary(report, store)


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))


def print_summary(report: dict, store: Path) -> None:
    from rich.table import Table

    from tensorllm.base.progress import output_console
    from tensorllm.search.report import ROLE_TITLES, _loss, _pct, _signed, how_measured

    SHORT_TITLES = {
        "baseline": "baseline",
        "winner": "winner (val)",
        "auto_best": "auto ranks, layer on val",
        "auto_at_winner_layer": "auto ranks, winner's layer",
    }

    console = output_console()
    table = Table(
        title=f"{report['method']} search on {report['task']} ({report['status']}; {how_measured(report)})"
    )
    for col in ("", "configuration", "val acc", "Δ val", "val loss", "test acc", "Δ test", "test loss"):
        table.add_column(col, justify="left" if col in ("", "configuration") else "right")
    for role in ROLE_TITLES:
        r = report["roles"].get(role)
        if r is None:
            continue
        v, t = r["val"] or {}, r["test"] or {}
        table.add_row(
            SHORT_TITLES[role],
            r["describe"],
            _pct(v.get("accuracy")),
            _signed(r["delta_val"]),
            _loss(v.get("loss")),
            _pct(t.get("accuracy")),
            _signed(r["delta_test"]),
            _loss(t.get("loss")),
        )
    console.print(table)
    for line in (report.get("statistics") or {}).get("verdicts", [])[:3]:
        console.print(line.replace("**", ""), markup=False, highlight=False)
    prog = report["progress"]
    console.print(
        f"{prog['val_done']} of {prog['configurations']} configurations on validation; "
        f"report.md, report.json and heatmap.png in [bold]{store}[/]"
    )


def register(app: typer.Typer) -> None:
    app.command("search")(with_method_flags(search, "search_flags"))
