"""The search report: `report.json` (machine-readable), `report.md` (tables), `heatmap.png` (heatmap.py).

Both files hold the roles (baseline, winner, the data-free comparisons) on validation and test,
the best configurations on validation and the grid of validation deltas; report_stats.py adds the
paired statistics of every delta, the four metrics and, for a racing search, the race's decisions.
"""

from __future__ import annotations

import math
from pathlib import Path

from tensorllm.base.files import atomic_write_text
from tensorllm.eval import get_task
from tensorllm.methods import registry
from tensorllm.search import heatmap, report_stats, select, transfer
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
    out = {"accuracy": line["accuracy"], "loss": line["loss"], "n": line["n"], "seconds": line["seconds"]}
    if line.get("metrics"):  # stores written before the per-item metrics have none
        out["metrics"] = line["metrics"]
    return out


def _delta(a, b):
    return a - b if _finite(a) and _finite(b) else None


def _ranks_of(line: dict) -> str:
    """The resolved settings of a one-step configuration ('312,60,8' / 'rank 57'), '' otherwise."""
    steps = line.get("steps") or []
    return registry.get(steps[0]["method"]).settings_label(steps[0]) if len(steps) == 1 else ""


DELTAS = heatmap.DELTAS  # what the grid cells show: accuracy gains, or loss reductions


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
    by: str = "accuracy",
    race: dict | None = None,
    extra: dict | None = None,
    store_seconds: float | None = None,
) -> dict:
    """`race` (racing searches): {"partial": {key: line on a prefix of the items}, "summary": {...}}.
    `extra` (transfer.py): "select_val" (the selection lines of several tasks), "tasks", "generations".
    `store_seconds`: the seconds of every line in the store, a race's slices included (default: of the
    whole-split lines in `val` and `test` only)."""
    extra = extra or {}
    chosen = extra.get("select_val") or val
    base = val.get(BASELINE.key)
    base_acc = base["accuracy"] if base else None
    task_kind = get_task(identity["task"]).kind
    by_loss = task_kind == "perplexity"
    partial = (race or {}).get("partial") or {}
    cells = []
    for r in grid.rows:
        row = []
        for c in grid.cols:
            cfg = grid.cells.get((r, c))
            line = (val.get(cfg.key) or partial.get(cfg.key)) if cfg is not None else None
            row.append(None if line is None else _cell(line, base, by_loss, cfg.key in partial))
        cells.append(row)
    configs = grid.configs()
    done = [chosen[c.key] for c in configs if c.key in chosen]
    ranked = select.rank(done, by)
    chosen_base = chosen.get(BASELINE.key)
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
        if v is None and cfg.key in partial:  # racing: dropped before the whole split
            role_rows[role]["val"] = _metrics(partial[cfg.key])
            role_rows[role]["delta_val"] = _prefix_delta(partial[cfg.key], base, by_loss)
    every = list(val.values()) + list(test.values())
    how = next((x["eval"] for x in every if x.get("eval")), {})
    return {
        "status": status,
        "task": identity["task"],
        "method": identity["method"],
        "identity": identity,
        "info": info,
        "accuracy_metric": {"metric": how.get("metric"), "answer_mode": how.get("answer_mode")},
        "selection": select.rule(by),
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
                "delta": _delta(x["accuracy"], chosen_base and chosen_base["accuracy"]),
                **({"metrics": x["metrics"]} if x.get("metrics") else {}),
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
            "eval_seconds_in_store": round(
                sum(x.get("seconds", 0.0) for x in every) if store_seconds is None else store_seconds, 2
            ),
            "step_cache": {"hits": cache.hits, "misses": cache.misses} if cache is not None else None,
        },
        # added with per-item results (2026-12): the comparisons behind every delta, in numbers and words
        "select_by": by,
        "statistics": report_stats.build(val, test, roles, ranked, by, task_kind),
        **({"race": race["summary"]} if race else {}),
        **{k: extra[k] for k in ("tasks", "generations") if extra.get(k)},
    }


def _prefix_delta(line: dict, base: dict | None, by_loss: bool):
    """A partial line's delta against the baseline on the same first items (racing)."""
    from tensorllm.search.stats import item_vector

    m = line["n"]
    if by_loss:
        b = item_vector(base, "loss")
        return None if b is None else float(b[:m].mean()) - line["loss"]
    b = item_vector(base, "accuracy")
    return None if b is None or line["accuracy"] is None else line["accuracy"] - 100.0 * int(b[:m].sum()) / m


def _cell(line: dict, base: dict | None, by_loss: bool, partial: bool) -> dict:
    if partial:
        delta = _prefix_delta(line, base, by_loss)
    elif by_loss:
        delta = _delta(base and base["loss"], line["loss"])
    else:
        delta = _delta(line["accuracy"], base and base["accuracy"])
    cell = {
        "key": line["key"],
        "accuracy": line["accuracy"],
        "loss": line["loss"],
        "delta": delta,
        "ranks": _ranks_of(line),
    }
    if partial:
        cell["n"] = line["n"]  # racing: dropped after this many items (delta on the same items)
    return cell


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
    heatmap.draw(report, root / "heatmap.png")


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
        (
            f"- configurations: {prog['val_done']} of {prog['configurations']} evaluated on validation; "
            if "race" not in rep
            else f"- configurations: {prog['configurations']} raced on validation (see Race), "
            f"{prog['val_done']} of them scored on all {n_val} items; "
        )
        + f"selection: {rep['selection']}",
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
    prefixes = []
    for role in ("baseline", "winner", "auto_best", "auto_at_winner_layer"):
        r = rep["roles"].get(role)
        if r is None:
            continue
        v, t = r["val"] or {}, r["test"] or {}
        same = role.startswith("auto") and r["key"] == rep["roles"]["winner"]["key"]
        described = r["describe"] + (" (= the winner)" if same else "")
        acc, delta, loss = role_val_cells(r, n_val)
        if acc.endswith(")"):
            prefixes.append(v["n"])
        lines.append(
            f"| {ROLE_TITLES[role]} | {described} | {acc} | {delta} | {loss} | {_pct(t.get('accuracy'))} | "
            f"{_signed(r['delta_test'])} | {_loss(t.get('loss'))} |"
        )
    lines.append("")
    if prefixes:
        lines += [
            "(n=...): the race dropped this configuration after the first n validation items; its val "
            "accuracy, Δ (against the baseline on those same items) and loss are on them only.",
            "",
        ]
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
    lines += report_stats.markdown(rep, ROLE_TITLES)
    lines += report_stats.race_markdown(rep)
    lines += transfer.markdown(rep, ROLE_TITLES)
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
        lines.append(f"| {r} | " + " | ".join(_cell_text(c, unit) for c in row) + " |")
    return "\n".join(lines) + "\n"


def role_val_cells(r: dict, n_val) -> tuple[str, str, str]:
    """A role's (val acc, Δ val, val loss) cells; a line on fewer items than the whole split (a racing
    role dropped early: its Δ is against the baseline on the same first items) says on how many."""
    v = r["val"] or {}
    cells = (_pct(v.get("accuracy")), _signed(r["delta_val"]), _loss(v.get("loss")))
    if isinstance(n_val, int) and isinstance(v.get("n"), int) and v["n"] < n_val:
        return tuple(f"{c} (n={v['n']})" for c in cells)
    return cells


def _cell_text(c: dict | None, unit: str) -> str:
    if c is None:
        return "-"
    return _signed(c["delta"], unit) + (f" (n={c['n']})" if "n" in c else "")
