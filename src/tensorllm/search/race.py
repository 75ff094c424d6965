"""Racing: find the validation winner without scoring every configuration on every item.

Every configuration is scored on a first slice of the validation items (items 0..first-1). After
each slice the configurations are ranked on the items they share (the selection rule of select.py
on that prefix) and every one that is behind the leader by more than a paired confidence bound is
dropped: a one-sided exact binomial test on the items only one of the two gets right (the paired
test behind McNemar's), p < alpha; for `--select-by loss` a one-sided normal bound on the mean paired
difference. The survivors' slice then grows by `eta` (successive halving's schedule: first,
first*eta, ..., the whole split), and only the new items are scored. The best `finalists` of a
round are never dropped; once at most that many survive (or the slice reaches the whole split)
they are scored on the rest of the split, and the winner is the best of them by the ordinary rule,
on the whole split, as the exhaustive search would rank them. In half precision (`rescore`) the
finalists are scored on the whole split afresh instead, in one evaluation as the exhaustive search
scores a configuration: there a slice-by-slice score can differ from it by a few items (batches of
other lengths), enough to swap two tied finalists.

`plan` is a pure function of what has been measured: it replays every decision from the per-item
scores (the store's lines) and says which (configuration, items) are still needed, or that the
race is over. So a resumed race recomputes nothing and takes the same decisions, every rank of a
distributed search takes them too, and `replay` runs the same decisions on the per-item results of
a complete (exhaustive) grid to show what racing would have chosen and what it would have cost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from tensorllm.base.errors import UserError
from tensorllm.eval.metrics import LOWER_IS_BETTER, SELECT_BY, aggregate
from tensorllm.search import select
from tensorllm.search.stats import binom_upper_tail, item_vector

MIN_FIRST = 100  # the default first slice: n / 16, but at least this many items (or the whole split)
HALF = ("bfloat16", "float16")


@dataclass(frozen=True)
class RaceParams:
    first: int | None = None  # items in the first slice (None: the default for the split's size)
    eta: float = 2.0  # each slice is eta times the previous one
    alpha: float = 0.01  # one-sided level of the paired test that drops a configuration
    finalists: int = 3  # never fewer survivors; these are scored on the whole split
    by: str = "accuracy"  # the selection metric (select.py)
    rescore: bool | None = None  # finalists scored on the whole split afresh (None: in half precision)

    def resolved(self, n: int, dtype: str = "float32") -> RaceParams:
        """The parameters for a split of n items and a model dtype, checked (a bad one is a UserError)."""
        self.check()
        if self.first is not None and self.first > n:
            raise UserError(
                f"--race-first {self.first} is larger than the validation split ({n} items); give 1..{n}"
            )
        first = self.first if self.first is not None else min(n, max(MIN_FIRST, math.ceil(n / 16)))
        rescore = self.rescore if self.rescore is not None else dtype in HALF
        return RaceParams(first, float(self.eta), float(self.alpha), self.finalists, self.by, rescore)

    def check(self) -> None:
        """Everything but the first slice's upper bound, which needs the split's size."""
        if self.first is not None and self.first < 1:
            raise UserError(f"--race-first must be >= 1, got {self.first}")
        if not self.eta > 1:
            raise UserError(f"--race-eta must be > 1, got {self.eta:g}")
        if not 0 < self.alpha < 1:
            raise UserError(f"--race-alpha must be between 0 and 1, got {self.alpha:g}")
        if self.finalists < 1:
            raise UserError(f"--race-finalists must be >= 1, got {self.finalists}")
        if self.by not in SELECT_BY:
            raise UserError(f"unknown --select-by '{self.by}' (choose from {', '.join(SELECT_BY)})")

    def identity(self) -> dict:
        return asdict(self)


def schedule(n: int, first: int, eta: float) -> list[int]:
    """The slice ends: first, first*eta, ..., n (each a whole number of items, strictly growing)."""
    ends, m = [], first
    while m < n:
        ends.append(m)
        m = max(m + 1, math.ceil(m * eta))
    return [*ends, n]


@dataclass
class Prefix:
    """What is measured of one configuration: its per-item scores on items 0..len-1."""

    score: np.ndarray  # the selection metric per item (bool, or float NLL for loss)
    nll: np.ndarray  # the gold answer's NLL per item (ties)
    whole: bool = False  # also scored on the whole split in one evaluation (a finalist)

    def __len__(self) -> int:
        return len(self.score)

    def key(self, m: int, by: str) -> tuple[float, float]:
        """select.score's sort key on items 0..m-1 (smaller is better)."""
        v = float(self.score[:m].mean()) * (1.0 if self.score.dtype != bool else 100.0)
        loss = float(self.nll[:m].mean())
        return (v if by in LOWER_IS_BETTER else -v, loss)


@dataclass
class Plan:
    requests: list[tuple[str, int, int]]  # (key, start, end): evaluations still needed, in grid order
    rounds: list[dict] = field(default_factory=list)  # the decisions taken so far
    finalists: list[str] | None = None  # when the race is over: the keys scored on the whole split

    @property
    def done(self) -> bool:
        return self.finalists is not None


def behind(c: Prefix, leader: Prefix, m: int, by: str, alpha: float) -> bool:
    """Whether c is worse than the leader on items 0..m-1 beyond the paired bound."""
    if c.score.dtype == bool:
        a, b = leader.score[:m], c.score[:m]
        only_leader, only_c = int(np.sum(a & ~b)), int(np.sum(~a & b))
        return binom_upper_tail(only_leader, only_leader + only_c) < alpha
    d = c.score[:m] - leader.score[:m]  # NLL: > 0 is worse
    if by not in LOWER_IS_BETTER:
        d = -d
    se = float(d.std(ddof=1)) / math.sqrt(m) if m > 1 else math.inf
    return se > 0 and float(d.mean()) - NormalDist().inv_cdf(1 - alpha) * se > 0


def plan(keys: list[str], n: int, params: RaceParams, data: dict[str, Prefix]) -> Plan:
    """Replay the race on `data` (resolved params); the evaluations it needs next, or its finalists."""
    survivors = list(keys)
    rounds: list[dict] = []
    for m in schedule(n, params.first, params.eta):
        if len(survivors) <= params.finalists:
            m = n
        if m == n:  # the finalists: the rest of the split, or (rescore) all of it in one evaluation
            if params.rescore:
                need = [(k, 0, n) for k in survivors if not (k in data and data[k].whole)]
            else:
                need = [(k, len(data.get(k, ())), n) for k in survivors if len(data.get(k, ())) < n]
            return Plan(need, rounds, None if need else survivors)
        need = [(k, len(data[k]) if k in data else 0, m) for k in survivors]
        need = [(k, start, end) for k, start, end in need if start < end]
        if need:
            return Plan(need, rounds)
        ranked = sorted(survivors, key=lambda k: data[k].key(m, params.by))  # stable: grid order
        leader = data[ranked[0]]
        dropped = [
            k for k in ranked[params.finalists :] if behind(data[k], leader, m, params.by, params.alpha)
        ]
        survivors = [k for k in survivors if k not in dropped]
        rounds.append({"items": m, "leader": ranked[0], "dropped": dropped, "survivors": len(survivors)})
    raise AssertionError("the schedule always ends at n")


def span_of(line: dict) -> tuple[int, int]:
    """The items a result line covers: its `part`, or the whole split for an ordinary line."""
    start, stop = line.get("part") or (0, line["n"])
    return int(start), int(stop)


def chain(lines: list[dict]) -> list[dict]:
    """The lines that cover items 0, 1, ... without a gap (the longest line at each start; a
    repeated part, if a crash ever left one, is skipped)."""
    by_start: dict[int, dict] = {}
    for line in lines:
        start, stop = span_of(line)
        if start not in by_start or stop > span_of(by_start[start])[1]:
            by_start[start] = line
    out, end = [], 0
    while end in by_start:
        out.append(by_start[end])
        end = span_of(by_start[end])[1]
    return out


def prefix_of(lines: list[dict], by: str) -> Prefix | None:
    """The per-item scores of the items 0..m-1 that a configuration's lines cover, as one Prefix."""
    scores, nlls = [], []
    for line in chain(lines):
        s, nll = item_vector(line, by), item_vector(line, "loss")
        if s is None or nll is None:
            break
        scores.append(s)
        nlls.append(nll)
    if not scores:
        return None
    return Prefix(np.concatenate(scores), np.concatenate(nlls))


def prefixes(lines: list[dict], by: str) -> dict[str, Prefix]:
    """What `plan` reads from a split's result lines: per configuration, the items its slices
    covered (the decisions were taken on those), and whether it was also scored on the whole split."""
    by_key: dict[str, list[dict]] = {}
    for line in lines:
        by_key.setdefault(line["key"], []).append(line)
    out = {}
    for key, group in by_key.items():
        parts = [x for x in group if "part" in x]
        whole = [x for x in group if "part" not in x]
        p = prefix_of(parts or whole, by)
        if p is not None:
            p.whole = bool(whole)
            out[key] = p
    return out


def merge_parts(lines: list[dict]) -> dict | None:
    """One result line of the items 0..n-1 that a configuration's part lines cover without a gap
    (None if they do not start at item 0). Accuracy and the 0/1 metrics are recounted from the
    items, as `evaluate` counts them; the loss is the item-weighted mean of the parts' losses."""
    parts = chain(lines)
    if not parts:
        return None
    n = span_of(parts[-1])[1]
    first = parts[0]
    items: dict = {}
    for name, v in (first.get("items") or {}).items():
        got = [p["items"][name] for p in parts]
        items[name] = "".join(got) if isinstance(v, str) else [x for g in got for x in g]
    weighted = lambda get: sum(get(p) * p["n"] for p in parts) / n  # noqa: E731
    loss = weighted(lambda p: p["loss"]) if all(p["loss"] is not None for p in parts) else None
    merged = {k: v for k, v in first.items() if k != "part"}
    merged.update(n=n, items=items, loss=loss, parts=len(parts))
    merged["metrics"] = {**aggregate(items), "loss": loss}
    acc = item_vector(merged, "accuracy")
    if first.get("accuracy") is not None:
        merged["accuracy"] = 100.0 * int(acc.sum()) / n if acc is not None and acc.dtype == bool else None
    merged["seconds"] = round(sum(p["seconds"] for p in parts), 3)
    ev = dict(first.get("eval") or {})
    ev.update(
        n=n, accuracy=merged["accuracy"], loss=loss, metrics=merged["metrics"], seconds=merged["seconds"]
    )
    merged["eval"] = ev
    return merged


def split_view(lines: list[dict], n: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """(complete, partial) result lines of one split, by key: an ordinary line as it is stored, the
    part lines of a racing configuration merged (complete when they reach item n)."""
    by_key: dict[str, list[dict]] = {}
    for line in lines:
        by_key.setdefault(line["key"], []).append(line)
    complete, partial = {}, {}
    for key, group in by_key.items():
        links = chain(group)
        if len(links) == 1 and "part" not in links[0]:
            merged = links[0]
        elif links:
            merged = merge_parts(links)
        else:
            continue
        (complete if merged["n"] >= n else partial)[key] = merged
    return complete, partial


def replay(lines: dict[str, dict], keys: list[str], params: RaceParams, dtype: str = "float32") -> dict:
    """The race's decisions on complete per-item results (the validation lines of an exhaustive store
    of that dtype): its winner, the exhaustive winner, and the item evaluations each needed."""
    n = lines[keys[0]]["n"]
    params = params.resolved(n, dtype)
    full = {k: prefix_of([lines[k]], params.by) for k in keys}
    lacking = [k for k in keys if full[k] is None or len(full[k]) != n]
    if lacking:
        raise UserError(
            f"{len(lacking)} of {len(keys)} configurations have no per-item results on all {n} items "
            "(a store written before they were kept, or an unfinished one)"
        )
    data: dict[str, Prefix] = {}
    evaluations = 0
    while not (p := plan(keys, n, params, data)).done:
        for k, start, end in p.requests:
            evaluations += end - start
            whole = (start, end) == (0, n) or (k in data and data[k].whole)
            data[k] = Prefix(full[k].score[:end], full[k].nll[:end], whole)
    winner = select.best([lines[k] for k in p.finalists], params.by)
    exhaustive = select.best([lines[k] for k in keys], params.by)
    return {
        "params": params.identity(),
        "n": n,
        "configurations": len(keys),
        "winner": winner["key"],
        "winner_describe": winner.get("describe"),
        "exhaustive_winner": exhaustive["key"],
        "exhaustive_winner_describe": exhaustive.get("describe"),
        "same_winner": winner["key"] == exhaustive["key"],
        "item_evaluations": evaluations,
        "full_grid_item_evaluations": n * len(keys),
        "fraction": evaluations / (n * len(keys)),
        "finalists": p.finalists,
        "rounds": p.rounds,
    }
