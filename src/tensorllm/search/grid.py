"""The search grid: which configurations a search evaluates, and their stable keys.

A configuration is a list of canonical recipe steps: the method name plus every option of its
typed config, with the data-free choices already resolved on the loaded model (fractional ranks,
target rates and `auto` ranks become the integer Tucker ranks they select in that layer; a LASER
`rho` becomes its integer rank). Its key is a hash of those steps, so two settings that select the
same decomposition (e.g. `0.5,0.5,1` and `288,32,8`) are one configuration, evaluated once, and the
key means the same thing in every run and on every rank.

A grid is a table of cells (row, column) -> configuration:
- one method (`method_grid`): rows = layers, columns = what the method's `columns` hook makes of the
  search options (Tucker: rank settings `--ranks "144,48,4;0.5,0.5,1;auto"` or `--rates`; LASER:
  (matrix, rho)); each cell is the method's `concrete_step` on that layer;
- hybrid: rows = the top-k configurations of the first `--from` store, columns = the combinations of
  the top-k of the others (each cell applies both, e.g. Tucker on attention then LASER on an FFN
  matrix); or one row per explicit `--recipe FILE`.
The search knows no method by name: it asks the registry (tensorllm.methods.registry).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from tensorllm.archs import blocks
from tensorllm.base.errors import UserError
from tensorllm.base.layers import parse_layers
from tensorllm.methods import registry
from tensorllm.recipe import Recipe


def config_key(steps: list[dict] | tuple[dict, ...]) -> str:
    text = json.dumps(list(steps), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Config:
    steps: tuple[dict, ...] = ()  # canonical recipe steps; () = the unmodified model

    @property
    def key(self) -> str:
        return config_key(self.steps)

    def describe(self) -> str:
        return " + ".join(describe_step(s) for s in self.steps) or "baseline (unmodified)"


BASELINE = Config(())


def describe_step(step: dict) -> str:
    return registry.get(step["method"]).describe(step)


@dataclass
class Grid:
    method: str
    row_title: str
    col_title: str
    rows: list[str] = field(default_factory=list)
    cols: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Config] = field(default_factory=dict)
    row_layer: dict[str, int] = field(default_factory=dict)  # one-method grids: row label -> layer index
    data_free_col: str | None = None  # the method's column chosen from the weights alone (Tucker's "auto")

    def add(self, row: str, col: str, config: Config) -> None:
        if row not in self.rows:
            self.rows.append(row)
        if col not in self.cols:
            self.cols.append(col)
        self.cells[(row, col)] = config

    def configs(self) -> list[Config]:
        """Distinct configurations, row by row (the evaluation and tie-breaking order)."""
        seen: dict[str, Config] = {}
        for r in self.rows:
            for c in self.cols:
                cfg = self.cells.get((r, c))
                if cfg is not None:
                    seen.setdefault(cfg.key, cfg)
        return list(seen.values())

    def cells_of(self, key: str) -> list[tuple[str, str]]:
        return [rc for rc, cfg in self.cells.items() if cfg.key == key]


# -- builders --------------------------------------------------------------------------------------


def method_grid(model, arch, method: str, layers, options: dict) -> Grid:
    """Rows = layers, columns = the method's columns for `options`; each cell one concrete step."""
    m = registry.get(method)
    col_title, columns = m.columns(arch, options)
    grid = Grid(method, "layer", col_title)
    if m.data_free_column and any(c.label == m.data_free_column for c in columns):
        grid.data_free_col = m.data_free_column
    for layer in parse_layers(layers, len(blocks(model, arch))):
        row = f"L{layer}"
        grid.row_layer[row] = layer
        for col in columns:
            grid.add(row, col.label, Config((m.concrete_step(model, arch, layer, col.options),)))
    return grid


def hybrid_grid(parts: list[list[tuple[str, Config]]]) -> Grid:
    """Every combination of one configuration from each part: rows from the first part, columns
    from the others (joined with ' + '); a cell applies the steps of all in order."""
    if len(parts) < 2 or any(not p for p in parts):
        raise UserError("a hybrid search combines at least two non-empty --from stores")
    grid = Grid("hybrid", "first store (top-k)", " + ".join("next store (top-k)" for _ in parts[1:]))
    for row_label, row_cfg in parts[0]:
        for combo in itertools.product(*parts[1:]):
            col = " + ".join(label for label, _ in combo)
            steps = row_cfg.steps + tuple(s for _, cfg in combo for s in cfg.steps)
            grid.add(row_label, col, Config(steps))
    return grid


def recipes_grid(paths: list[str | Path]) -> Grid:
    """One cell per recipe file (its steps as written), for an explicit list of combinations."""
    grid = Grid("hybrid", "recipe", "")
    for path in paths:
        rec = Recipe.load(path)
        for i, step in enumerate(rec.steps, 1):
            if not registry.get(step.method).searchable:
                raise UserError(
                    f"recipe {path} step {i}: the search applies "
                    f"{' and '.join(m.name for m in registry.searchable())} steps, not '{step.method}'"
                )
        grid.add(Path(path).stem, "recipe", Config(tuple(s.to_dict() for s in rec.steps)))
    return grid
