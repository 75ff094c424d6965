"""The search report: `report.json` (machine-readable), `report.md` (tables), `heatmap.png`.

The heatmap shows validation accuracy minus the baseline's, in percentage points, one cell per
(row, column) of the grid: a diverging colormap centred at 0 (blue = better than the unmodified
model, red = worse), every cell annotated, the winner outlined, cells not evaluated yet grey.
A method's data-free column (Tucker's `auto`) also shows in each cell the ranks it chose.
The perplexity task has no accuracy: its cells show the validation loss reduction instead
(baseline loss minus the configuration's, nats/token; positive = better, blue again).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from tensorllm.base.files import atomic_write_text
from tensorllm.eval import get_task
from tensorllm.methods import registry
from tensorllm.search import select
from tensorllm.search.grid import BASELINE, Grid

ROLE_TITLES = {
    "baseline": "baseline (unmodified)",
    "winner": "search winner (selected on val)",
    "auto_best": "data-free `auto` ranks, layer selected on val",
    "auto_at_winner_layer": "data-free `auto` ranks at the winner's layer",
}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _metrics(line: dict | None) -> dict | None:
    if line is None:
        return None
    return {"accuracy": line["accuracy"], "loss": line["loss"], "n": line["n"], "seconds": line["seconds"]}


def _delta(a, b):
    return a - b if _finite(a) and _finite(b) else None


def _ranks_of(line: dict) -> str:
    """The resolved settings of a one-step configuration ('312,60,8' / 'rank 57'), '' otherwise."""
    steps = line.get("steps") or []
    return registry.get(steps[0]["method"]).settings_label(steps[0]) if len(steps) == 1 else ""


# What the grid cells (table and heatmap) show: accuracy gains, or loss reductions for tasks without accuracy.
DELTAS = {
    "accuracy": ("val accuracy minus baseline", "points", "+.1f"),
    "loss": ("val loss reduction vs baseline", "nats/token", "+.3f"),
}  # baseline minus config: + = better


def build(
    grid: Grid,
    identity: dict,
    info: dict,
    val: dict[str, dict],
    test: dict[str, dict],
    roles: dict,
    *,
    status: str,
    run_seconds: float,
    evaluated: int,
    cache=None,
    setup: dict | None = None,
) -> dict:
    base = val.get(BASELINE.key)
    base_acc = base["accuracy"] if base else None
    by_loss = get_task(identity["task"]).kind == "perplexity"
    cells = []
    for r in grid.rows:
        row = []
        for c in grid.cols:
            cfg = grid.cells.get((r, c))
            line = val.get(cfg.key) if cfg is not None else None
            row.append(
                None
                if line is None
                else {
                    "key": line["key"],
                    "accuracy": line["accuracy"],
                    "loss": line["loss"],
                    "delta": _delta(base and base["loss"], line["loss"])
                    if by_loss
                    else _delta(line["accuracy"], base_acc),
                    "ranks": _ranks_of(line),
                }
            )
        cells.append(row)
    configs = grid.configs()
    done = [val[c.key] for c in configs if c.key in val]
    ranked = select.rank(done)
    if "winner" not in roles and ranked:  # partial run: the best so far, clearly marked
        roles = {**roles, "winner": next(c for c in configs if c.key == ranked[0]["key"])}
    role_rows = {}
    for role, cfg in roles.items():
        v, t = val.get(cfg.key), test.get(cfg.key)
        base_t = test.get(BASELINE.key)
        role_rows[role] = {
            "key": cfg.key,
            "describe": cfg.describe(),
            "steps": list(cfg.steps),
            "cells": [list(rc) for rc in grid.cells_of(cfg.key)],
            "val": _metrics(v),
            "test": _metrics(t),
            "delta_val": _delta(v and v["accuracy"], base_acc),
            "delta_test": _delta(t and t["accuracy"], base_t and base_t["accuracy"]),
        }
    every = list(val.values()) + list(test.values())
    how = next((x["eval"] for x in every if x.get("eval")), {})
    return {
        "status": status,
        "task": identity["task"],
        "method": identity["method"],
        "identity": identity,
        "info": info,
        "accuracy_metric": {"metric": how.get("metric"), "answer_mode": how.get("answer_mode")},
        "selection": "highest validation accuracy; ties: lower validation loss; then grid order",
        "roles": role_rows,
        "grid": {
            "row_title": grid.row_title,
            "col_title": grid.col_title,
            "rows": grid.rows,
            "cols": grid.cols,
            "cells": cells,
            "delta": "loss" if by_loss else "accuracy",
        },
        "ranking": [
            {
                "key": x["key"],
                "describe": x["describe"],
                "accuracy": x["accuracy"],
                "loss": x["loss"],
                "delta": _delta(x["accuracy"], base_acc),
            }
            for x in ranked[:10]
        ],
        "progress": {
            "configurations": len(configs),
            "val_done": len(done),
            "baseline_val": base is not None,
            "test_done": sum(1 for c in roles.values() if c.key in test),
        },
        "run": {
            "seconds": round(run_seconds, 2),
            "setup_seconds": setup,
            "evaluated_this_run": evaluated,
            "eval_seconds_in_store": round(sum(x.get("seconds", 0.0) for x in every), 2),
            "step_cache": {"hits": cache.hits, "misses": cache.misses} if cache is not None else None,
        },
    }


# -- writing ---------------------------------------------------------------------------------------


def _clean(obj):
    """JSON without NaN/Infinity (strict parsers reject them): non-finite floats become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write(root: Path, report: dict) -> None:
    import json

    root = Path(root)
    atomic_write_text(root / "report.json", json.dumps(_clean(report), indent=2) + "\n")
    atomic_write_text(root / "report.md", markdown(report))
    heatmap(report, root / "heatmap.png")


def how_measured(rep: dict) -> str:
    """'answer mode: faithful' (generative tasks) or the metric: every report says how accuracy was
    measured."""
    m = rep.get("accuracy_metric") or {}
    if m.get("answer_mode"):
        return f"answer mode: {m['answer_mode']}"
    if m.get("metric"):
        return f"metric: {m['metric']} (no answer mode)"
    return f"answer mode: {rep['identity']['answer_mode']}"


def _pct(x) -> str:
    return f"{x:.2f}" if _finite(x) else "-"


def _signed(x, unit: str = "points") -> str:
    return format(x, "+.4f" if unit == "nats/token" else "+.2f") if _finite(x) else "-"


def _loss(x) -> str:
    return f"{x:.4f}" if _finite(x) else "-"


def markdown(rep: dict) -> str:
    ident, info, prog = rep["identity"], rep["info"], rep["progress"]
    base = rep["roles"].get("baseline") or {}
    n_val = (base.get("val") or {}).get("n", "?")
    n_test = (base.get("test") or {}).get("n", "?")
    lines = [f"# {rep['method']} search on {rep['task']} ({rep['status']})", ""]
    lines += [
        f"- model: `{info.get('model_spec')}` ({info.get('architecture')}, {ident['dtype']}, "
        f"{ident['device_type']}, fingerprint {ident['model']}"
        + (", K/V heads expanded to multi-head" if info.get("expand_kv") else "")
        + ")",
        f"- data: {ident['data']}; validation n = {n_val}, test n = {n_test}; {how_measured(rep)}; "
        f"batch size {ident.get('batch_size')}",
        f"- configurations: {prog['val_done']} of {prog['configurations']} evaluated on validation; "
        f"selection: {rep['selection']}",
        f"- code: tensorllm {info.get('code_version')}; this run {rep['run']['seconds']:.1f} s, "
        f"{rep['run']['evaluated_this_run']} evaluations (all evaluations in the store: "
        f"{rep['run']['eval_seconds_in_store']:.1f} s)",
        "",
    ]
    if rep["status"] != "complete":
        lines += [
            "**Partial**: not every configuration has been evaluated yet; the winner below is provisional. "
            "Rerun the same command to continue.",
            "",
        ]
    lines += [
        "| | configuration | val acc | Δ val | val loss | test acc | Δ test | test loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for role in ("baseline", "winner", "auto_best", "auto_at_winner_layer"):
        r = rep["roles"].get(role)
        if r is None:
            continue
        v, t = r["val"] or {}, r["test"] or {}
        same = role.startswith("auto") and r["key"] == rep["roles"]["winner"]["key"]
        described = r["describe"] + (" (= the winner)" if same else "")
        lines.append(
            f"| {ROLE_TITLES[role]} | {described} | {_pct(v.get('accuracy'))} | "
            f"{_signed(r['delta_val'])} | {_loss(v.get('loss'))} | {_pct(t.get('accuracy'))} | "
            f"{_signed(r['delta_test'])} | {_loss(t.get('loss'))} |"
        )
    lines.append("")
    if "auto_best" in rep["roles"]:
        lines += [
            "`auto` ranks come from the weights alone (Gavish-Donoho threshold on each unfolding); the "
            '"layer selected on val" row still uses validation data to pick the layer, so only the '
            '"at the winner\'s layer" row compares ranks with everything else held equal.',
            "",
        ]
    elif getattr(registry.find(rep["method"]), "data_free_column", None):
        col = registry.find(rep["method"]).data_free_column
        lines += [f"No data-free comparison: the grid has no `{col}` column (add `;{col}` to --ranks).", ""]
    lines += [
        "## Best on validation",
        "",
        "| # | configuration | val acc | Δ val | val loss |",
        "|---:|---|---:|---:|---:|",
    ]
    for i, x in enumerate(rep["ranking"], 1):
        lines.append(
            f"| {i} | {x['describe']} | {_pct(x['accuracy'])} | {_signed(x['delta'])} | {_loss(x['loss'])} |"
        )
    g = rep["grid"]
    label, unit, _ = DELTAS[g.get("delta", "accuracy")]
    lines += [
        "",
        f"## {label[0].upper() + label[1:]} ({unit})",
        "",
        "![heatmap](heatmap.png)",
        "",
        f"| {g['row_title']} | " + " | ".join(g["cols"]) + " |",
        "|---|" + "---:|" * len(g["cols"]),
    ]
    for r, row in zip(g["rows"], g["cells"]):
        lines.append(
            f"| {r} | " + " | ".join("-" if c is None else _signed(c["delta"], unit) for c in row) + " |"
        )
    return "\n".join(lines) + "\n"


def heatmap(rep: dict, path: Path) -> None:
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    g = rep["grid"]
    rows, cols = g["rows"], g["cols"]
    label, unit, spec = DELTAS[g.get("delta", "accuracy")]
    data = np.full((len(rows), len(cols)), np.nan)
    for i, row in enumerate(g["cells"]):
        for j, c in enumerate(row):
            if c is not None and _finite(c["delta"]):
                data[i, j] = c["delta"]
    finite = np.abs(data[np.isfinite(data)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = colormaps["RdBu"].with_extremes(bad="#d9d9d9")
    width = max(5.0, 2.2 + 1.3 * len(cols) + 0.06 * max(len(r) for r in rows))
    fig = Figure(figsize=(width, max(3.0, 1.6 + 0.34 * len(rows))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
    size = 8 if len(rows) <= 40 else 6
    free = getattr(registry.find(rep["method"]), "data_free_column", None)  # its cells show what it chose
    for i, row in enumerate(g["cells"]):
        for j, c in enumerate(row):
            if c is None or not _finite(c["delta"]):
                ax.text(
                    j,
                    i,
                    "-" if c is None else "n/a",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="#555555",
                )
                continue
            text = format(c["delta"], spec)
            if cols[j] == free and c.get("ranks"):
                text += f"  ({c['ranks']})"
            dark = abs(c["delta"]) > 0.6 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if dark else "black")
    winner = rep["roles"].get("winner")
    for r, c in (winner or {}).get("cells", []):
        if r in rows and c in cols:
            ax.add_patch(
                Rectangle((cols.index(c) - 0.5, rows.index(r) - 0.5), 1, 1, fill=False, lw=2.5, ec="black")
            )
    ax.set_xticks(
        range(len(cols)),
        cols,
        rotation=25 if max(map(len, cols)) > 8 else 0,
        ha="right" if max(map(len, cols)) > 8 else "center",
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=8 if len(rows) <= 40 else 6)
    ax.set_xlabel(g["col_title"])
    ax.set_ylabel(g["row_title"])
    base = (rep["roles"].get("baseline") or {}).get("val") or {}
    title = f"{rep['task']}: {rep['method']} search, {label}"
    if _finite(base.get("accuracy")):
        title += f" ({base['accuracy']:.1f}%, n={base['n']})"
    ax.set_title(title + ("" if rep["status"] == "complete" else " [partial]"), fontsize=10)
    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cbar.set_label(f"{unit} (winner outlined)")
    fd, tmp = tempfile.mkstemp(prefix=".heatmap.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
