"""Where a search's evaluation time went: its store's lines summed per split and slice size.

    python bench/search_phases.py STORE [--json OUT]

Per group (split, items per line): lines, seconds (each line's wall time, apply and restore included),
the method steps' own seconds (`apply`), each evaluation phase (tokenise, generate, judge, loss, ...)
and `other`, what the line's time holds beyond those (the unedited model's path being prepared, the
restore, the task's items being selected, writing the line).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def summarise(store: Path) -> list[dict]:
    groups: dict[tuple[str, int], dict] = defaultdict(lambda: defaultdict(float))
    for path in sorted(store.glob("results-rank*.jsonl")):
        for text in path.read_text().splitlines():
            if not text.strip():
                continue
            line = json.loads(text)
            g = groups[(line["split"], line["n"])]
            g["lines"] += 1
            g["seconds"] += line["seconds"]
            applied = sum(step.get("seconds", 0.0) for step in line.get("apply", []))
            g["apply"] += applied
            phases = line["eval"].get("seconds_by_phase") or {}
            for name, sec in phases.items():
                g[name] += sec
            g["other"] += line["seconds"] - applied - sum(phases.values())
    rows = []
    for (split, n), g in sorted(groups.items(), key=lambda kv: (kv[0][0] != "val", kv[0][0], kv[0][1])):
        rows.append({"split": split, "items": n, **{k: round(v, 2) for k, v in g.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = summarise(args.store)
    names = sorted({k for r in rows for k in r} - {"split", "items", "lines", "seconds"})
    print(f"{'split':<8}{'items':>7}{'lines':>7}{'seconds':>9}" + "".join(f"{k:>10}" for k in names))
    total = {k: 0.0 for k in ["lines", "seconds", *names]}
    for r in rows:
        for k in total:
            total[k] += r.get(k, 0.0)
        print(
            f"{r['split']:<8}{r['items']:>7}{int(r['lines']):>7}{r['seconds']:>9.2f}"
            + "".join(f"{r.get(k, 0.0):>10.2f}" for k in names)
        )
    print(
        f"{'all':<8}{'':>7}{int(total['lines']):>7}{total['seconds']:>9.2f}"
        + "".join(f"{total[k]:>10.2f}" for k in names)
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
