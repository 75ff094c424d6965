"""The validation phase of a racing search: race.py's decisions, fed from the store, run round by
round through the runner's claim loop (so `--gpus N` shares each round's evaluations out).

The baseline is scored on the whole split first (every delta needs it). Then, each round, every
rank reads the store (after the barrier that ends the previous round), computes the same plan and
takes that plan's evaluations from the shared counter; a part of the items is appended as a line
with `"part": [start, end]`, a whole split as an ordinary line. A round that leaves evaluations
undone (the time budget) ends the race for this run on every rank alike: the store decides, not a
rank's clock. Rerunning resumes from the store, with the same decisions.
"""

from __future__ import annotations

from tensorllm.search import race, select
from tensorllm.search.grid import BASELINE


def view(store, split: str, n: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """(complete, partial) lines of `split` in `store`, racing parts merged (race.split_view)."""
    return race.split_view([x for x in store.lines() if x.get("split") == split], n)


def best_raced(lines: list[dict], by: str) -> dict:
    """The best of lines measured on different numbers of items: the one that lasted longest in the
    race, then the selection rule (for lines of the whole split: select.best)."""
    return min(lines, key=lambda x: (-x["n"], select.score(x, by)))


def ranked(store, n: int, by: str) -> list[dict]:
    """Every configuration's line of a store's validation split, best first: the complete ones by
    the selection rule, then those a race dropped, the longest-lasting first."""
    complete, partial = view(store, "val", n)
    done = [x for x in complete.values() if x["steps"]]
    rest = sorted((x for x in partial.values() if x["steps"]), key=lambda x: (-x["n"], select.score(x, by)))
    return select.rank(done, by) + rest


def validation(search) -> tuple[bool, dict, dict, dict]:
    """Race the grid on validation: (finished, complete lines, partial lines, summary for the report)."""
    params, n = search.race, search.n_val
    configs = search.grid.configs()
    by_key = {c.key: c for c in configs}
    keys = list(by_key)
    asked: set = set()
    if search.phase("val", [BASELINE]):
        while True:
            lines = [x for x in search.store.lines() if x.get("split") == "val" and x["key"] in by_key]
            plan = race.plan(keys, n, params, race.prefixes(lines, params.by))
            if plan.done or asked & set(plan.requests):  # over, or out of time on every rank
                break
            asked = set(plan.requests)
            search.run_jobs(
                "val",
                [
                    (by_key[k], None if (start, end) == (0, n) else (start, end))
                    for k, start, end in plan.requests
                ],
                f"round {len(plan.rounds) + 1} of the race",
            )
    else:
        plan = None
    complete, partial = view(search.store, "val", n)
    lines = [x for x in search.store.lines() if x.get("split") == "val" and x["key"] in by_key]
    covered = {k: (partial.get(k) or complete.get(k) or {"n": 0})["n"] for k in keys}  # items raced on
    summary = {
        "params": params.identity(),
        "n": n,
        "done": bool(plan and plan.done),
        "rounds": [
            {**r, "leader_describe": by_key[r["leader"]].describe()} for r in (plan.rounds if plan else [])
        ],
        "finalists": plan.finalists if plan else None,
        "item_evaluations": sum(x["n"] for x in lines),  # the finalists' whole-split evaluations too
        "full_grid_item_evaluations": n * len(keys),
        "items_per_configuration": covered,
    }
    return bool(plan and plan.done), complete, partial, summary
