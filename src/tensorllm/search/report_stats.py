"""The report's statistics, metrics and race sections (report.py builds the rest).

Every delta a report states (each role against the baseline, on validation and on test; the winner
against the runner-up on validation, where it was selected) gets a paired comparison on the same
items (stats.py): the bootstrap 95% interval and McNemar's exact p. The report then says in words
whether the winner can be told apart from the runner-up and from the baseline. Lines of stores
written before per-item scores were kept have no statistics; the report says so.
"""

from __future__ import annotations

import math

from tensorllm.search import stats
from tensorllm.search.grid import BASELINE

METRIC_TITLES = {
    "accuracy": "accuracy",
    "faithful": "containment, prompt + continuation (LASER)",
    "continuation": "containment, continuation only",
    "exact": "exact match, first answer span",
    "loss": "gold-answer loss",
}
METRIC_COLUMNS = ("faithful", "continuation", "exact", "correct", "loss")  # those a report has
METRIC_TITLES["correct"] = "accuracy (label logits)"


def stats_metrics(by: str, task_kind: str) -> list[str]:
    """The metrics whose deltas get statistics: the selection metric, and accuracy (the tables' deltas)."""
    if task_kind == "perplexity":
        return ["loss"]
    return list(dict.fromkeys([by, "accuracy"]))


def build(val: dict, test: dict, roles: dict, ranked: list[dict], by: str, task_kind: str) -> dict:
    """`report.json`'s "statistics": the comparisons and the verdicts in words."""
    base_v, base_t = val.get(BASELINE.key), test.get(BASELINE.key)
    out: dict = {
        "method": (
            f"paired over the same items: bootstrap 95% interval ({stats.RESAMPLES} resamples, seed "
            f"{stats.SEED}); McNemar's exact two-sided p on the items only one of the two gets right; "
            f"distinguishable: p < {stats.ALPHA} (loss: the interval excludes 0)"
        ),
        "metrics": stats_metrics(by, task_kind),
        "per_item_results": bool((base_v or {}).get("items")),
        "comparisons": [],
        "verdicts": [],
    }
    winner = roles.get("winner")
    runner_up = ranked[1] if len(ranked) > 1 else None
    for metric in out["metrics"]:
        for role, cfg in roles.items():
            if role == "baseline" or (role != "winner" and winner is not None and cfg.key == winner.key):
                continue  # a role that is the winner (Tucker's `auto` cells often are) is compared once
            for split, pool, base in (("val", val, base_v), ("test", test, base_t)):
                cmp = stats.compare(pool.get(cfg.key), base, metric)
                if cmp is not None:
                    out["comparisons"].append({"a": role, "b": "baseline", "split": split, **cmp})
        if winner is not None and runner_up is not None:
            cmp = stats.compare(val.get(winner.key), runner_up, metric)
            if cmp is not None:
                out["comparisons"].append(
                    {"a": "winner", "b": "runner_up", "split": "val", "runner_up": runner_up["key"], **cmp}
                )
    main = out["metrics"][0]
    for b, split in (("runner_up", "val"), ("baseline", "val"), ("baseline", "test")):
        cmp = next(
            (
                c
                for c in out["comparisons"]
                if (c["a"], c["b"], c["split"], c["metric"]) == ("winner", b, split, main)
            ),
            None,
        )
        if cmp is not None:
            name = f"the runner-up ({runner_up['describe']})" if b == "runner_up" else "the baseline"
            out["verdicts"].append(verdict(cmp, name, split))
    if out["verdicts"]:
        out["verdicts"].append(
            f"Validation comparisons do not correct for the selection among {len(ranked)} configurations "
            "(the winner is the best of many on these very items); the test split is the unbiased one."
        )
    return out


def _p(p) -> str:
    if p is None:
        return "-"
    if p == 0.0:
        return "< 1e-300"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def _num(x, unit: str) -> str:
    return format(x, "+.4f" if unit == "nats/token" else "+.2f")


def describe_cmp(cmp: dict) -> str:
    unit = "nats/token" if cmp["metric"] == "loss" else "points"
    lo, hi = cmp["ci95"]
    text = f"Δ {_num(cmp['delta'], unit)} {unit}, 95% interval [{_num(lo, unit)}, {_num(hi, unit)}]"
    if cmp["p"] is not None:
        text += f", McNemar p = {_p(cmp['p'])} ({cmp['only_a']} vs {cmp['only_b']} items)"
    return text + f", n = {cmp['n']}"


def verdict(cmp: dict, other: str, split: str) -> str:
    where = "validation" if split == "val" else "test"
    metric = METRIC_TITLES.get(cmp["metric"], cmp["metric"])
    if not cmp["distinguishable"]:
        return (
            f"**The winner is not distinguishable from {other} on {where}** ({metric}: {describe_cmp(cmp)})."
        )
    word = "better than" if stats.better(cmp) else "worse than"
    return f"The winner is {word} {other} on {where} ({metric}: {describe_cmp(cmp)})."


def markdown(rep: dict, titles: dict) -> list[str]:
    """The statistics and metrics sections of report.md."""
    st = rep.get("statistics")
    if st is None:
        return []
    lines = ["## Statistics", ""]
    if not st["comparisons"]:
        lines += [
            "No per-item results in the store (its lines were measured before tensorllm kept them), so no "
            "intervals or p-values; a search into a new store has them.",
            "",
        ]
    else:
        lines += [f"Paired comparisons ({st['method']}).", ""]
        lines += [
            "| comparison | split | metric | Δ | 95% interval | McNemar p | only a / only b | n |",
            "|---|---|---|---:|---|---:|---:|---:|",
        ]
        for c in st["comparisons"]:
            unit = "nats/token" if c["metric"] == "loss" else "points"
            b = "runner-up" if c["b"] == "runner_up" else c["b"]
            pair = "-" if c["only_a"] is None else f"{c['only_a']} / {c['only_b']}"
            lo, hi = c["ci95"]
            lines.append(
                f"| {titles.get(c['a'], c['a'])} vs {b} | {c['split']} | {c['metric']} | "
                f"{_num(c['delta'], unit)} | [{_num(lo, unit)}, {_num(hi, unit)}] | {_p(c['p'])} | {pair} | "
                f"{c['n']} |"
            )
        lines.append("")
        lines += [f"- {v}" for v in st["verdicts"]] + [""]
    lines += metrics_table(rep, titles)
    return lines


def _metric(x, name: str) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:.4f}" if name == "loss" else f"{x:.2f}"


def metrics_table(rep: dict, titles: dict) -> list[str]:
    found = [
        (role, split, (r.get(split) or {}).get("metrics"))
        for role, r in rep["roles"].items()
        for split in ("val", "test")
    ]
    found = [f for f in found if f[2]]
    cols = [k for k in METRIC_COLUMNS if any(k in m for _, _, m in found)]
    if not found:
        return []
    whole = ((rep["roles"].get("baseline") or {}).get("val") or {}).get("n")

    def where(role: str, split: str) -> str:  # a racing role dropped early: scored on the first n items
        n = rep["roles"][role][split].get("n")
        early = split == "val" and isinstance(n, int) and isinstance(whole, int) and n < whole
        return f"{split} (n={n})" if early else split

    rows = [
        f"| {titles.get(role, role)} | {where(role, split)} | "
        + " | ".join(_metric(m.get(k), k) for k in cols)
        + " |"
        for role, split, m in found
    ]
    head = " | ".join(METRIC_TITLES[k] for k in cols)
    return [
        "## Metrics",
        "",
        "Every generative item scored four ways (percent; loss in nats/token): LASER's containment in the "
        "decoded prompt + continuation, containment in the continuation alone, exact match of the first "
        "generated answer span (SQuAD-normalised), and the gold answer's mean per-token NLL.",
        "",
        f"| | split | {head} |",
        "|---|---|" + "---:|" * len(cols),
        *rows,
        "",
    ]


def race_markdown(rep: dict) -> list[str]:
    """The race's decisions (racing searches only)."""
    r = rep.get("race")
    if not r:
        return []
    p = r["params"]
    saved = r["item_evaluations"] / r["full_grid_item_evaluations"] if r["full_grid_item_evaluations"] else 0
    lines = [
        "## Race",
        "",
        f"Racing on validation (selection metric: {p['by']}): every configuration scored on the first "
        f"{p['first']} items, the slice growing {p['eta']:g}x per round for the survivors; dropped when "
        f"behind the round's leader with a one-sided paired exact p < {p['alpha']:g} (on the items only one "
        f"of the two gets right); the best {p['finalists']} of a round are kept and, once at most that many "
        f"survive, scored on all {r['n']} items. Item evaluations: {r['item_evaluations']:,} of the "
        f"exhaustive grid's {r['full_grid_item_evaluations']:,} ({100 * saved:.1f}%; the baseline's "
        f"{r['n']} counted in neither)." + ("" if r["done"] else " **The race is not over yet.**"),
        "",
        "| round | items | raced | dropped | leader |",
        "|---:|---:|---:|---:|---|",
    ]
    for i, rd in enumerate(r["rounds"], 1):
        raced = rd["survivors"] + len(rd["dropped"])
        lines.append(f"| {i} | {rd['items']} | {raced} | {len(rd['dropped'])} | {rd['leader_describe']} |")
    if r.get("finalists"):
        lines.append(f"| final | {r['n']} | {len(r['finalists'])} | - | (the winner above) |")
    return [*lines, ""]
