"""The search's heatmap (`heatmap.png`): validation accuracy minus the baseline's, one cell per
(row, column) of the grid, in percentage points: a diverging colormap centred at 0 (blue = better
than the unmodified model, red = worse), every cell annotated, the winner outlined, cells not
evaluated yet grey. A method's data-free column (Tucker's `auto`) also shows in each cell the ranks
it chose. The perplexity task has no accuracy: its cells show the validation loss reduction
instead (baseline loss minus the configuration's, nats/token; positive = better, blue again).
A racing search's cells that were dropped early show their delta on the items they were scored on.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from tensorllm.base.errors import OutputError
from tensorllm.methods import registry

# What the grid cells (table and heatmap) show: accuracy gains, or loss reductions for tasks without accuracy.
DELTAS = {
    "accuracy": ("val accuracy minus baseline", "points", "+.1f"),
    "loss": ("val loss reduction vs baseline", "nats/token", "+.3f"),
}  # baseline minus config: + = better


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def draw(rep: dict, path: Path) -> None:
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    g = rep["grid"]
    rows, cols = g["rows"], g["cols"]
    label, unit, spec = DELTAS[g.get("delta", "accuracy")]
    data = np.full((len(rows), len(cols)), np.nan)
    for i, row in enumerate(g["cells"]):
        for j, c in enumerate(row):
            if c is not None and _finite(c["delta"]):
                data[i, j] = c["delta"]
    finite = np.abs(data[np.isfinite(data)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = colormaps["RdBu"].with_extremes(bad="#d9d9d9")
    width = max(5.0, 2.2 + 1.3 * len(cols) + 0.06 * max(len(r) for r in rows))
    fig = Figure(figsize=(width, max(3.0, 1.6 + 0.34 * len(rows))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
    size = 8 if len(rows) <= 40 else 6
    free = getattr(registry.find(rep["method"]), "data_free_column", None)  # its cells show what it chose
    for i, row in enumerate(g["cells"]):
        for j, c in enumerate(row):
            if c is None or not _finite(c["delta"]):
                ax.text(
                    j,
                    i,
                    "-" if c is None else "n/a",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="#555555",
                )
                continue
            text = format(c["delta"], spec)
            if cols[j] == free and c.get("ranks"):
                text += f"  ({c['ranks']})"
            dark = abs(c["delta"]) > 0.6 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if dark else "black")
    winner = rep["roles"].get("winner")
    for r, c in (winner or {}).get("cells", []):
        if r in rows and c in cols:
            ax.add_patch(
                Rectangle((cols.index(c) - 0.5, rows.index(r) - 0.5), 1, 1, fill=False, lw=2.5, ec="black")
            )
    ax.set_xticks(
        range(len(cols)),
        cols,
        rotation=25 if max(map(len, cols)) > 8 else 0,
        ha="right" if max(map(len, cols)) > 8 else "center",
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=8 if len(rows) <= 40 else 6)
    ax.set_xlabel(g["col_title"])
    ax.set_ylabel(g["row_title"])
    base = (rep["roles"].get("baseline") or {}).get("val") or {}
    title = f"{rep['task']}: {rep['method']} search, {label}"
    if _finite(base.get("accuracy")):
        title += f" ({base['accuracy']:.1f}%, n={base['n']})"
    ax.set_title(title + ("" if rep["status"] == "complete" else " [partial]"), fontsize=10)
    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cbar.set_label(f"{unit} (winner outlined)")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".heatmap.", suffix=".png", dir=path.parent)
        os.close(fd)
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a read-only store: one line, like every other write
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
