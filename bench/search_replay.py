"""Replay racing on complete grids: what would the race have chosen, and at what cost?

    python bench/search_replay.py STORE [STORE ...] --out replay.json
    python bench/search_replay.py STORE --race-alpha 0.001,0.01,0.05 --race-first 0,400   # a sweep

Each STORE is an exhaustive search store (`tensorllm search --exhaustive`) whose validation lines
carry per-item results (stores written since per-item results are kept). The racing decisions of
tensorllm.search.race run on those stored results, exactly as a racing search would take them on
the same items, and the replay says whether the race picks the exhaustive winner and how many item
evaluations it needed against the full grid (configurations x validation items; the baseline's
evaluation, which both need, is counted in neither). `--race-first 0` means the default slice.
A half-precision store is replayed as a race in half precision runs: the finalists scored on the
whole split afresh (their slices counted too).
No model is loaded: a replay takes seconds on the CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from common import emit_json

from tensorllm.base.errors import UserError
from tensorllm.search import Store, race


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def grid_order(store: Store, lines: dict[str, dict]) -> list[str]:
    """The configurations in grid order (the selection's tie-break): the report's grid when there is
    one, else the order of the lines (one process evaluates in grid order)."""
    path = store.root / "report.json"
    if path.is_file():
        rep = json.loads(path.read_text())
        keys = [c["key"] for row in rep["grid"]["cells"] for c in row if c is not None]
        if set(keys) == set(lines):
            return list(dict.fromkeys(keys))
    return list(lines)


def replay_store(path: str, combos: list[dict], allow_partial: bool = False) -> dict:
    store = Store(path)
    manifest = store.manifest()
    if manifest is None:
        raise UserError(f"{path} is not a search store (no store.json)")
    if manifest.get("racing"):
        raise UserError(f"{path} is a racing store; replay needs the complete grid of an exhaustive search")
    lines = {k: x for k, x in store.results("val").items() if x["steps"]}
    if not lines:
        raise UserError(f"{path} holds no evaluated configuration")
    keys = grid_order(store, lines)
    n = max(x["n"] for x in lines.values())
    whole = [k for k in keys if lines[k]["n"] == n and lines[k].get("items")]
    partial = len(whole) < _grid_size(store, len(keys))
    if (partial or len(whole) < len(keys)) and not allow_partial:
        raise UserError(
            f"{path}: {len(whole)} of {_grid_size(store, len(keys))} configurations have per-item results on "
            "the whole split; pass --allow-partial to replay on those"
        )
    keys = whole
    out = {"store": str(path), "task": manifest.get("task"), "method": manifest.get("method"), "replays": []}
    out["partial_grid"] = partial
    for combo in combos:
        r = race.replay(lines, keys, race.RaceParams(**combo), manifest.get("dtype") or "float32")
        out["replays"].append(r)
        print(
            f"{path}: {r['params']} -> {r['winner_describe']} "
            f"({'same as' if r['same_winner'] else 'NOT'} exhaustive: {r['exhaustive_winner_describe']}); "
            f"{r['item_evaluations']:,} of {r['full_grid_item_evaluations']:,} item evaluations "
            f"({100 * r['fraction']:.1f}%)",
            file=sys.stderr,
        )
    out["n"], out["configurations"] = out["replays"][0]["n"], len(keys)
    out["exhaustive_winner"] = out["replays"][0]["exhaustive_winner_describe"]
    return out


def _grid_size(store: Store, default: int) -> int:
    path = store.root / "report.json"
    if path.is_file():
        return json.loads(path.read_text())["progress"]["configurations"]
    return default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--race-first", default="0", help="comma list; 0 = the default slice")
    ap.add_argument("--race-eta", default="2")
    ap.add_argument("--race-alpha", default=str(race.RaceParams.alpha))
    ap.add_argument("--race-finalists", default=str(race.RaceParams.finalists))
    ap.add_argument("--select-by", default="accuracy")
    ap.add_argument(
        "--allow-partial", action="store_true", help="replay on the configurations evaluated so far"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    combos = [
        {"first": int(f) or None, "eta": e, "alpha": a, "finalists": int(k), "by": args.select_by}
        for f, e, a, k in itertools.product(
            _floats(args.race_first),
            _floats(args.race_eta),
            _floats(args.race_alpha),
            _floats(args.race_finalists),
        )
    ]
    try:
        result = {"stores": [replay_store(s, combos, args.allow_partial) for s in args.stores]}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    result["default_params_same_winner_everywhere"] = all(  # the defaults of `tensorllm search`
        r["same_winner"]
        for s in result["stores"]
        for r in s["replays"]
        if {**r["params"], "rescore": None}
        == {**race.RaceParams(by=args.select_by).resolved(r["n"]).identity(), "rescore": None}
    )
    emit_json(result, args.out, quiet=True)


if __name__ == "__main__":
    main()
