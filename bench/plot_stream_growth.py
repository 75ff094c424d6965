"""Plot how streamed compression grows with the model: wall time (split into read / compute / write /
copy) and peak CPU RSS / GPU memory against the parameter count, one line per method, from the JSON
files of bench/stream_bench.py.

    python bench/plot_stream_growth.py results/stream_gpu.json --out results/stream_growth.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PARTS = ("read_s", "compute_s", "write_s", "copy_s")


def rows(paths: list[Path]) -> dict[str, list[tuple[float, dict]]]:
    """{method: [(parameters, run), ...]} sorted by size, runs that failed left out."""
    out: dict[str, list] = {}
    for path in paths:
        for shape in json.loads(path.read_text())["shapes"].values():
            for method in ("tucker", "laser", "gqa"):
                run = shape.get(method)
                if isinstance(run, dict) and "error" not in run:
                    out.setdefault(method, []).append((shape["params"] / 1e9, run))
    return {m: sorted(r, key=lambda x: x[0]) for m, r in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    data = rows(args.results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for method, runs in data.items():
        x = [n for n, _ in runs]
        left.plot(x, [r["wall_s"] for _, r in runs], marker="o", label=f"{method} wall")
        for part in PARTS:
            left.plot(x, [r[part] for _, r in runs], linestyle=":", marker=".", label=f"{method} {part[:-2]}")
        # the child's own RSS as psutil sampled it: runs before VmHWM reported ru_maxrss, which Linux keeps
        # across exec (a child of a big parent reported the parent's RSS; bench/results/stream_13b_h200)
        rss = [r.get("psutil_peak_rss_bytes") or r["peak_rss_bytes"] for _, r in runs]
        right.plot(x, [b / 2**30 for b in rss], marker="o", label=f"{method} CPU RSS")
        gpu = [r.get("peak_gpu_bytes") for _, r in runs]
        if all(g is not None for g in gpu):
            right.plot(x, [g / 2**30 for g in gpu], marker="s", label=f"{method} GPU")
    left.set(xlabel="parameters (billions)", ylabel="seconds", title="time, all layers")
    right.set(xlabel="parameters (billions)", ylabel="GiB", title="peak memory", ylim=(0, None))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
