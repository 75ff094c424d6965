"""Plot the GQA recovery fine-tune's held-out perplexity curves from bench/gqa_smollm2.py logs.

    python bench/plot_finetune_curves.py --original 19.123 --out curves.png lr3e-4=ft4.log lr1e-3=ft5.log

A log's "step N/M  monitor V  T s" lines (printed by tensorllm.methods.gqa.finetune) are the curve;
several logs of one run (a resumed one) can be joined with '+': name=first.log+resume.log.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

LINE = re.compile(r"step (\d+)/(\d+)\s+monitor (\S+)\s+(\d+) s")  # the value may read inf or nan


def curve(paths: list[Path]) -> list[tuple[int, float, float]]:
    """(step, perplexity, seconds) in step order; a resumed log's seconds continue the first one's."""
    points: dict[int, tuple[float, float]] = {}
    offset = 0.0
    for path in paths:
        last = 0.0
        for step, _, value, secs in LINE.findall(path.read_text()):
            step = int(step)
            if step not in points:
                points[step] = (float(value), offset + float(secs))
            last = max(last, offset + float(secs))
        offset = last
    return [(s, *points[s]) for s in sorted(points)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="name=log[+log...]")
    ap.add_argument("--original", type=float, required=True, help="the original model's held-out perplexity")
    ap.add_argument("--target", type=float, default=1.25, help="target ratio to the original")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    curves = {}
    for run in args.runs:
        name, _, files = run.partition("=")
        pts = curves[name] = curve([Path(f) for f in files.split("+")])
        if not pts:
            raise SystemExit(
                f"{files}: no 'step N/M  monitor V  T s' lines (a run with --train-steps logs them)"
            )
        ax.plot([p[2] / 60 for p in pts], [p[1] for p in pts], marker=".", label=name)
    ax.axhline(args.original, color="k", lw=0.8, label=f"original {args.original:.2f}")
    ax.axhline(
        args.target * args.original,
        color="r",
        ls="--",
        lw=0.8,
        label=f"target {args.target:g}x = {args.target * args.original:.2f}",
    )
    ax.set_yscale("log")
    ax.set_xlabel("fine-tune minutes (incl. the monitor's evaluations)")
    ax.set_ylabel("held-out perplexity of the GQA export")
    ax.set_title("SmolLM2-135M, 9 -> 1 K/V heads: recovery fine-tune")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    for name, pts in curves.items():
        print(f"{name}: {len(pts)} points, last step {pts[-1][0]} ppl {pts[-1][1]:.3f} at {pts[-1][2]:.0f} s")


if __name__ == "__main__":
    main()
