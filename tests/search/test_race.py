"""Racing (search/race.py): the schedule, the paired stop, resumable and replayable decisions, and
part lines merged into the line of the whole split."""

import numpy as np
import pytest

from tensorllm.base.errors import UserError
from tensorllm.search import race


def bits(v) -> str:
    return "".join("1" if x else "0" for x in v)


def full_line(key, correct, nll, part=None):
    n = len(correct)
    start, stop = part or (0, n)
    c, ll = correct[start:stop], nll[start:stop]
    out = {
        "key": key,
        "split": "val",
        "describe": key,
        "steps": [{"method": "x"}],
        "n": stop - start,
        "accuracy": 100.0 * sum(c) / len(c),
        "loss": float(np.mean(ll)),
        "metrics": {},
        "seconds": 1.0,
        "eval": {"metric": "generate-substring", "answer_mode": "faithful"},
        "items": {"faithful": bits(c), "continuation": bits(c), "exact": bits(c), "nll": list(ll)},
    }
    if part:
        out["part"] = list(part)
    return out


def grid(n=2000, k=30, seed=0, best=0.30, others=(0.10, 0.27)):
    """k configurations: one clearly best (rate `best`), the others spread over `others`."""
    rng = np.random.default_rng(seed)
    rates = np.r_[np.linspace(*others, k - 1)[: k // 2], best, np.linspace(*others, k - 1)[k // 2 :]]
    lines = {}
    for i, r in enumerate(rates):
        correct = list(rng.random(n) < r)
        lines[f"c{i:02d}"] = full_line(f"c{i:02d}", correct, list(rng.random(n) + 2.0))
    return lines


def test_schedule_and_default_first_slice():
    assert race.schedule(3786, 237, 2.0) == [237, 474, 948, 1896, 3786]
    assert race.schedule(10, 10, 2.0) == [10] and race.schedule(5, 1, 1.1) == [1, 2, 3, 4, 5]
    assert race.RaceParams().resolved(3786).first == 237
    assert race.RaceParams().resolved(1000).first == 100 and race.RaceParams().resolved(40).first == 40
    with pytest.raises(UserError, match="larger than the validation split"):
        race.RaceParams(first=500).resolved(300)
    for bad, match in (({"eta": 1.0}, "eta"), ({"alpha": 0.0}, "alpha"), ({"finalists": 0}, "finalists")):
        with pytest.raises(UserError, match=match):
            race.RaceParams(**bad).check()


def test_replay_finds_the_exhaustive_winner_with_fewer_evaluations():
    lines = grid()
    keys = sorted(lines)
    out = race.replay(lines, keys, race.RaceParams())
    assert out["same_winner"] and out["winner"] == "c15"
    assert out["item_evaluations"] < 0.5 * out["full_grid_item_evaluations"]
    assert out["winner"] in out["finalists"]
    assert sum(len(r["dropped"]) for r in out["rounds"]) == len(keys) - len(out["finalists"])


def test_plan_is_a_function_of_what_was_measured():
    """Feeding back exactly what plan asked for, in any number of sittings, gives the same race."""
    lines = grid(n=800, k=12, seed=3)
    keys = sorted(lines)
    params = race.RaceParams(first=100).resolved(800)
    full = {k: race.prefix_of([lines[k]], "accuracy") for k in keys}
    data, asked = {}, []
    while not (p := race.plan(keys, 800, params, data)).done:
        assert all(start == (len(data[k]) if k in data else 0) for k, start, _ in p.requests)
        asked.append(p.requests)
        for k, _, end in p.requests[:5]:  # a partial round (a resumed or a distributed search)
            data[k] = race.Prefix(full[k].score[:end], full[k].nll[:end])
    again = race.plan(keys, 800, params, data)
    assert again.finalists == p.finalists and again.rounds == p.rounds and len(asked) > len(p.rounds)


def test_finalists_are_never_dropped_and_ties_keep_everyone():
    n = 300
    same = [i % 3 == 0 for i in range(n)]
    lines = {f"k{i}": full_line(f"k{i}", same, [2.0] * n) for i in range(6)}
    out = race.replay(lines, sorted(lines), race.RaceParams(first=50, finalists=2))
    assert out["rounds"] and all(not r["dropped"] for r in out["rounds"])  # nobody is behind
    assert out["item_evaluations"] == out["full_grid_item_evaluations"] and out["winner"] == "k0"


def test_parts_merge_into_the_line_of_the_whole_split():
    rng = np.random.default_rng(0)
    correct, nll = list(rng.random(90) < 0.4), list(rng.random(90))
    whole = full_line("a", correct, nll)
    parts = [full_line("a", correct, nll, part) for part in ((40, 90), (0, 10), (10, 40), (10, 40))]
    merged = race.merge_parts(parts)
    assert merged["n"] == 90 and "part" not in merged and merged["parts"] == 3
    assert merged["items"] == whole["items"] and merged["accuracy"] == whole["accuracy"]
    assert merged["loss"] == pytest.approx(whole["loss"])
    assert merged["metrics"]["faithful"] == pytest.approx(whole["accuracy"])
    complete, partial = race.split_view([*parts[1:3], full_line("b", correct, nll)], 90)
    assert (
        set(complete) == {"b"} and partial["a"]["n"] == 40 and complete["b"] == full_line("b", correct, nll)
    )
    assert race.merge_parts(parts[:1]) is None  # a gap before item 40


def test_loss_races_by_the_paired_normal_bound():
    rng = np.random.default_rng(2)
    n = 1000
    lines = {}
    for i, shift in enumerate([0.0, 0.5, 0.6, 0.02]):
        lines[f"l{i}"] = full_line(f"l{i}", [False] * n, list(rng.random(n) + 2.0 + shift))
    out = race.replay(lines, sorted(lines), race.RaceParams(by="loss", first=100, finalists=2))
    assert out["same_winner"] and out["winner"] == "l0"
    assert {"l1", "l2"} <= {k for r in out["rounds"] for k in r["dropped"]}


def test_half_precision_rescores_the_finalists_on_the_whole_split():
    lines = grid(n=800, k=12, seed=3)
    keys = sorted(lines)
    single = race.replay(lines, keys, race.RaceParams(first=100))
    half = race.replay(lines, keys, race.RaceParams(first=100), dtype="bfloat16")
    assert not single["params"]["rescore"] and half["params"]["rescore"]
    assert half["finalists"] == single["finalists"] and half["winner"] == single["winner"]
    last = half["rounds"][-1]["items"] if half["rounds"] else 0
    assert half["item_evaluations"] == single["item_evaluations"] + last * len(half["finalists"])
    params = race.RaceParams(first=100).resolved(800, "bfloat16")
    full = {k: race.prefix_of([lines[k]], "accuracy") for k in keys}
    data = {k: race.Prefix(full[k].score, full[k].nll) for k in keys}  # every item, but in slices
    plan = race.plan(keys, 800, params, data)
    assert not plan.done and all((start, end) == (0, 800) for _, start, end in plan.requests)
