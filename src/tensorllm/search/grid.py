"""The search grid: which configurations a search evaluates, and their stable keys.

A configuration is a list of canonical recipe steps: the method name plus every option of its
typed config, with the data-free choices already resolved on the loaded model (fractional ranks,
target rates and `auto` ranks become the integer Tucker ranks they select in that layer; a LASER
`rho` becomes its integer rank). Its key is a hash of those steps, so two settings that select the
same decomposition (e.g. `0.5,0.5,1` and `288,32,8`) are one configuration, evaluated once, and the
key means the same thing in every run and on every rank.

A grid is a table of cells (row, column) -> configuration:
- tucker: rows = layers, columns = rank settings (`--ranks "144,48,4;0.5,0.5,1;auto"` or `--rates`);
- laser:  rows = layers, columns = (matrix, rho);
- hybrid: rows = the top-k configurations of the first `--from` store, columns = the combinations of
  the top-k of the others (each cell applies both, e.g. Tucker on attention then LASER on an FFN
  matrix); or one row per explicit `--recipe FILE`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tensorllm.archs import blocks, get_module
from tensorllm.attention import read_attention
from tensorllm.errors import UserError
from tensorllm.layers import parse_layers
from tensorllm.methods import registry
from tensorllm.methods.tucker import resolve_ranks, to_tensor
from tensorllm.recipe import Recipe
from tensorllm.tensor.svd import laser_rank


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
    raw = step.get("layers")
    layers = raw if isinstance(raw, str) else ",".join(map(str, raw if isinstance(raw, (list, tuple)) else [raw]))
    if step["method"] == "tucker":
        ranks = step.get("ranks")
        if isinstance(ranks, list):
            shown = ",".join(map(str, ranks))
        else:
            shown = str(ranks) if ranks else f"rate {step['rate']}"
        extra = "" if step.get("variant", "multihead") == "multihead" else f" {step['variant']}"
        return f"tucker L{layers} ({shown}){extra}"
    if step["method"] == "laser":
        amount = f"rank {step['rank']}" if step.get("rank") else f"rho {step['rho']}"
        return f"laser L{layers} {step['matrix']} {amount}"
    return f"{step['method']} L{layers}"


@dataclass
class Grid:
    method: str
    row_title: str
    col_title: str
    rows: list[str] = field(default_factory=list)
    cols: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Config] = field(default_factory=dict)
    row_layer: dict[str, int] = field(default_factory=dict)  # tucker/laser: row label -> layer index

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


# -- settings ----------------------------------------------------------------------------------

def parse_rank_settings(text: str) -> list[tuple[int, ...] | tuple[float, ...] | str]:
    """'144,48,4;0.5,0.5,1;auto' -> [(144, 48, 4), (0.5, 0.5, 1.0), 'auto']."""
    from tensorllm.cli import parse_ranks

    out = []
    for part in text.split(";"):
        part = part.strip()
        if part:
            out.append(parse_ranks(part))
    if not out:
        raise UserError(f"--ranks '{text}' holds no rank setting")
    return out


def parse_floats(text: str, what: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"{what} '{text}' must be comma-separated numbers") from None
    if not values:
        raise UserError(f"{what} '{text}' holds no value")
    return values


def rank_label(setting) -> str:
    if isinstance(setting, str):
        return setting
    return ",".join(f"{r:g}" if isinstance(r, float) else str(r) for r in setting)


# -- builders --------------------------------------------------------------------------------------

def _canonical(method: str, options: dict) -> dict:
    cfg = registry.config_from_dict(method, options)
    return {"method": method, **registry.config_to_dict(cfg)}


def tucker_step(model, arch, layer: int, options: dict) -> dict:
    """One layer's Tucker step with its ranks resolved to integers on this model's weights."""
    cfg = registry.config_from_dict("tucker", {"layers": [layer], **options})
    w = read_attention(model, arch, layer)
    dtype = torch.float64 if cfg.compute_dtype == "float64" else torch.float32
    w = w.with_(q=w.q.to(dtype), k=w.k.to(dtype), v=w.v.to(dtype), o=w.o.to(dtype))  # as compress_layer does
    t = to_tensor(w, cfg.variant, cfg.matrix)
    try:
        ranks = resolve_ranks(cfg, t, t.numel())
    except UserError as exc:
        raise UserError(f"layer {layer}: {exc}") from None
    cfg = dataclasses.replace(cfg, ranks=tuple(int(r) for r in ranks), rate=None)
    return {"method": "tucker", **registry.config_to_dict(cfg)}


def tucker_grid(model, arch, layers, ranks=(), rates=(), variant: str = "multihead",
                matrix: str | None = None) -> Grid:
    if not ranks and not rates:
        raise UserError("a tucker search needs rank settings: --ranks '144,48,4;0.5,0.5,1;auto' or --rates 5,20,50")
    settings = [(rank_label(r), {"ranks": r}) for r in ranks] + [(f"rate {x:g}", {"rate": x}) for x in rates]
    extra = {"variant": variant, **({"matrix": matrix} if matrix else {})}
    grid = Grid("tucker", "layer", "ranks (R1,R2,R3)" if variant != "single" else "ranks (R1,R2)")
    for layer in parse_layers(layers, len(blocks(model, arch))):
        row = f"L{layer}"
        grid.row_layer[row] = layer
        for label, opts in settings:
            grid.add(row, label, Config((tucker_step(model, arch, layer, {**opts, **extra}),)))
    return grid


def laser_step(model, arch, layer: int, matrix: str, rho: float) -> dict:
    path = arch.matrix_paths().get(matrix, matrix)
    try:
        weight = get_module(blocks(model, arch)[layer], path).weight
    except AttributeError:
        named = ", ".join(arch.matrix_paths())
        raise UserError(f"{arch.name} has no matrix '{matrix}' (named ones: {named}; or a module path)") from None
    if not 0 < rho <= 1:
        raise UserError(f"laser rho must lie in (0, 1], got {rho}")
    return _canonical("laser", {"layers": [layer], "matrix": matrix, "rank": laser_rank(tuple(weight.shape), rho)})


def laser_grid(model, arch, layers, rhos, matrices=("ffn_in",)) -> Grid:
    grid = Grid("laser", "layer", "matrix, rho" if len(matrices) > 1 else f"{matrices[0]} rho")
    for layer in parse_layers(layers, len(blocks(model, arch))):
        row = f"L{layer}"
        grid.row_layer[row] = layer
        for matrix in matrices:
            for rho in rhos:
                col = f"{matrix} {rho:g}" if len(matrices) > 1 else f"{rho:g}"
                grid.add(row, col, Config((laser_step(model, arch, layer, matrix, rho),)))
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
            if step.method not in ("tucker", "laser"):
                raise UserError(f"recipe {path} step {i}: the search applies tucker and laser steps, "
                                f"not '{step.method}'")
        grid.add(Path(path).stem, "recipe", Config(tuple(s.to_dict() for s in rec.steps)))
    return grid
