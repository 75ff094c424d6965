"""Other tasks in one search: selection across tasks, the chosen edit scored on other tasks' test
splits (transfer), and its side effects.

- `--report-on TASK,...`: the baseline and the search's roles (winner, data-free cells) are also
  scored on each of these tasks' test splits, with the same paired statistics as the main task;
- `--select-on TASK,...`: the configurations are scored on each listed task's validation split and
  the winner is the best mean validation accuracy over them (equal weights, so the best mean gain
  over the baseline: LASER's "one shared setting"); ties by the mean loss. An exhaustive search only
  (a race selects on `--task` alone). `--task` stays the store's task: its grid is the heatmap;
- `--side-effects`: the other offline tasks (held-out perplexity, BIG-bench FEVER, epistemic
  reasoning and WikidataQA, whichever is not `--task`) join `--report-on`, and report.md shows the
  first test items' greedy generations of the baseline and the winner side by side.

Store lines of another task T are ordinary lines whose split is `val@T` / `test@T` (only `--task`
reads `--data`; the others use their built-in sources), so adding a task to a finished search
scores only what is new.
"""

from __future__ import annotations

from tensorllm.search import stats
from tensorllm.search.grid import BASELINE

SIDE_EFFECT_TASKS = ("perplexity", "fever_bigbench", "epistemic_reasoning", "wikidata_qa")
GENERATIONS = 5  # test items whose generations a store line keeps (report.md shows them with --side-effects)


def split_name(split: str, task: str, primary: str) -> str:
    return split if task == primary else f"{split}@{task}"


def task_of(split: str, primary: str) -> tuple[str, str]:
    """('val' | 'test', task) of a store split name."""
    base, _, task = split.partition("@")
    return base, task or primary


def report_tasks(spec) -> list[str]:
    """The tasks other than --task whose test splits score the roles."""
    extra = list(spec.report_on)
    if spec.side_effects:
        extra += [t for t in SIDE_EFFECT_TASKS if t != spec.task]
    extra += [t for t in spec.select_on if t != spec.task]
    return [t for t in dict.fromkeys(extra) if t != spec.task]


def combined(by_task: dict[str, dict[str, dict]], keys: list[str]) -> dict[str, dict]:
    """One selection line per configuration scored on every task: the mean accuracy (and loss)."""
    out = {}
    for key in keys:
        lines = [pool.get(key) for pool in by_task.values()]
        if any(x is None for x in lines):
            continue
        acc = [x["accuracy"] for x in lines]
        out[key] = {
            **lines[0],
            "accuracy": sum(acc) / len(acc) if None not in acc else None,
            "loss": sum(x["loss"] for x in lines) / len(lines),
            "n": sum(x["n"] for x in lines),
            "per_task": {t: {"accuracy": x["accuracy"], "loss": x["loss"]} for t, x in zip(by_task, lines)},
            "metrics": {},
            "items": None,
        }
    return out


def build(roles: dict, pools: dict[str, dict[str, dict]], select_on: list[str]) -> dict:
    """report.json's "tasks": for every other task and split, each role against the baseline."""
    rows = []
    for split_key, pool in pools.items():
        split, task = split_key
        base = pool.get(BASELINE.key)
        for role, cfg in roles.items():
            line = pool.get(cfg.key)
            if line is None:
                continue
            row = {
                "task": task,
                "split": split,
                "role": role,
                "describe": cfg.describe(),
                "accuracy": line["accuracy"],
                "loss": line["loss"],
                "n": line["n"],
            }
            if role != "baseline" and base is not None:
                metric = "loss" if line["accuracy"] is None else "accuracy"
                row["vs_baseline"] = stats.compare(line, base, metric)
            rows.append(row)
    return {"select_on": select_on, "rows": rows}


def generations(roles: dict, test: dict[str, dict], k: int = GENERATIONS) -> list[dict]:
    """The first test items' greedy generations of the baseline and the winner (store line "examples")."""
    base, win = test.get(BASELINE.key), test.get(roles["winner"].key) if "winner" in roles else None
    if not base or not win or not base.get("examples") or not win.get("examples"):
        return []
    return [
        {"prompt": b["prompt"], "answer": b["answer"], "baseline": b["prediction"], "winner": w["prediction"]}
        for b, w in zip(base["examples"][:k], win["examples"][:k])
    ]


def _fmt(x, loss: bool) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if loss else f"{x:.2f}"


def markdown(rep: dict, titles: dict) -> list[str]:
    from tensorllm.search.report_stats import _p

    t = rep.get("tasks")
    lines: list[str] = []
    if t and t["rows"]:
        if len(t["select_on"]) > 1 or t["select_on"] != [rep["task"]]:
            lines += [f"Selected on the mean validation accuracy of: {', '.join(t['select_on'])}.", ""]
        lines += [
            "## Other tasks (the same edits)",
            "",
            "Accuracy in percent (perplexity: its loss, nats/token); Δ against the baseline on the same "
            "items, with the paired statistics above.",
            "",
            "| task | split | | configuration | accuracy / loss | Δ | 95% interval | McNemar p | n |",
            "|---|---|---|---|---:|---:|---|---:|---:|",
        ]
        for r in t["rows"]:
            loss = r["accuracy"] is None
            c = r.get("vs_baseline")
            delta = interval = p = "-"
            if c:
                unit = "+.4f" if loss else "+.2f"
                delta = format(c["delta"], unit)
                interval = f"[{format(c['ci95'][0], unit)}, {format(c['ci95'][1], unit)}]"
                p = _p(c["p"]) + ("" if c["distinguishable"] else " (not distinguishable)")
            value = _fmt(r["loss"] if loss else r["accuracy"], loss)
            role = titles.get(r["role"], r["role"])
            lines.append(
                f"| {r['task']} | {r['split']} | {role} | {r['describe']} | {value} | {delta} | {interval} | "
                f"{p} | {r['n']} |"
            )
        lines.append("")
    gens = rep.get("generations") or []
    if gens:
        lines += ["## Generations (first test items, greedy)", "", "| prompt | gold | baseline | winner |"]
        lines.append("|---|---|---|---|")
        cell = lambda s: (s or "").replace("|", "\\|").replace("\n", " ").strip()[:160]  # noqa: E731
        lines += [
            f"| {cell(g['prompt'])} | {cell(g['answer'])} | {cell(g['baseline'])} | {cell(g['winner'])} |"
            for g in gens
        ]
        lines.append("")
    return lines
