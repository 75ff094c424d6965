"""LASER: layer-selective rank reduction of one weight matrix (arXiv 2312.13558).

The chosen matrix of each selected layer is replaced by its rank-k SVD approximation,
k = max(1, floor(min(m, n) * rho)) or an explicit `rank`. Exact SVD by default; the reference
code's randomised SVD (`svd_lowrank`, 2 power iterations) is available only with a seed, because
without one its results depend on the run and the hardware.

`matrix` names a matrix by the architecture's own name (gate, up, down for gated FFNs; fc_in, fc_out
for plain ones; q, k, v, o or the fused qkv), by LASER's name with LASER's meaning (for a gated FFN
`fc_in` is the gate, `fc_up` the up and `fc_out` the down matrix; `out_proj` is o), or by a module path
relative to a block (e.g. "mlp.up_proj"). The default is the FFN's input matrix that is not a gate (up,
or fc_in), tensorllm's choice since its first search; the report names the module changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from tensorllm.archs import blocks, get_module
from tensorllm.base.errors import UserError
from tensorllm.base.layers import one_layer_as_list, parse_layers
from tensorllm.base.progress import track
from tensorllm.methods import budget, factorised, laser_experts, registry, whiten
from tensorllm.methods.registry import Column, Flag, Method, layers_label, parse_floats, split_names
from tensorllm.tensor.svd import laser_rank, truncated_svd


@dataclass
class LaserConfig:
    """layers: e.g. 27, [27], "20-29", "all".
    matrix: up / fc_in (default: the FFN input that is not a gate), down / fc_out, gate, q, k, v, o,
        LASER's names (fc_in, fc_up, fc_out, out_proj, ...), or a module path.
    rho: keep floor(min(m, n) * rho) singular values (LASER's rho); or rank: an explicit rank.
    svd: exact (default) | randomized (needs seed).
    expert: with a MoE matrix (experts.gate / experts.up / experts.down), only this expert (default: all)."""

    layers: int | str | tuple[int, ...] | None = None
    matrix: str | None = None
    rho: float | None = None
    rank: int | None = None
    # keep this fraction of the layers' matrix parameters, ranks per layer (methods/budget.py)
    budget: float | None = registry.added_later()
    # data-aware: fit the outputs on this many calibration tokens (whiten.py) of `calib_file`
    calibrate: int | None = registry.added_later()
    calib_file: str | None = registry.added_later()  # text / JSON / JSONL; None: the built-in English text
    svd: Literal["exact", "randomized"] = "exact"
    seed: int | None = None
    expert: int | None = registry.added_later()

    def __post_init__(self) -> None:
        self.layers = one_layer_as_list(self.layers)

    def validate(self) -> None:
        if self.layers is None:
            raise UserError("laser needs 'layers' (e.g. 27 or 20-29)")
        if self.budget is not None:  # whole-model budget (methods/budget.py): no rho, no rank
            if not 0 < self.budget <= 1:
                raise UserError(f"laser budget must lie in (0, 1], got {self.budget}")
            if self.rho is not None or self.rank is not None:
                raise UserError("laser takes one of 'rho', 'rank' and 'budget', not several")
        elif (self.rho is None) == (self.rank is None):
            raise UserError("laser needs exactly one of 'rho' and 'rank'")
        if self.calibrate is not None and self.calibrate < 1:
            raise UserError(f"laser calibrate is a number of calibration tokens >= 1, got {self.calibrate}")
        if self.calib_file is not None and self.calibrate is None:
            raise UserError("laser calib_file needs calibrate (the number of calibration tokens)")
        if self.rho is not None and not 0 < self.rho <= 1:
            raise UserError(f"laser rho must lie in (0, 1], got {self.rho}")
        if self.rank is not None and self.rank < 1:
            raise UserError(f"laser rank must be >= 1, got {self.rank}")
        if self.svd == "randomized" and self.seed is None:
            raise UserError("laser svd 'randomized' needs a seed (results would not be reproducible)")
        if self.expert is not None and self.expert < 0:
            raise UserError(f"laser expert must be >= 0, got {self.expert}")


NAME = "laser"
RHOS = (0.9, 0.8, 0.6, 0.2, 0.1, 0.05, 0.01)  # LASER's published grid: the search's default


def matrix_module(model, arch, layer: int, matrix: str | None):
    """(the matrix's own name, its module path, the module) in block `layer`; None = the FFN input."""
    name, path = arch.resolve_matrix(matrix or arch.ffn_input or "")
    laser_experts.check_matrix(arch, name, path, None)
    try:
        return name, path, get_module(blocks(model, arch)[layer], path)
    except AttributeError:
        names = ", ".join([*arch.matrix_paths(), *arch.matrix_aliases()])
        raise UserError(f"{arch.name} has no matrix '{matrix}' (names: {names}; or a module path)") from None


class Laser(Method):
    name, config_cls = NAME, LaserConfig
    searchable = streamable = True
    compress_flags = (
        Flag(
            "matrix",
            "laser: up / fc_in (default), down / fc_out, gate, q, k, v, o, LASER's names "
            "(fc_in = the gate of a gated FFN) or a module path.",
        ),
        Flag("rho", "laser: keep floor(min(m,n)*rho) singular values.", type=float),
        Flag("rank", "laser: explicit rank.", type=int),
        Flag(
            "budget",
            "laser: keep this fraction of the layers' matrix parameters, ranks per layer.",
            type=float,
        ),
        Flag(
            "calibrate",
            "laser: data-aware: fit the outputs on this many calibration tokens (default: data-free).",
            type=int,
        ),
        Flag("expert", "laser: with experts.gate/up/down (MoE), only this expert (default: all).", type=int),
    )
    search_flags = (
        Flag(
            "rhos",
            "laser: fractions of singular values kept (default LASER's 0.9,0.8,0.6,0.2,0.1,0.05,0.01).",
            parse=lambda s: parse_floats(s, "--rhos"),
        ),
        Flag(
            "matrix",
            "laser: up / fc_in (default), down / fc_out, gate, ... comma-separated for several",
            key="matrices",
            parse=split_names,
        ),
    )

    def apply(self, model, arch, cfg: LaserConfig, ctx) -> dict:
        """LASER rank reduction of one named matrix in each selected layer."""
        layers = parse_layers(cfg.layers, len(blocks(model, arch)))
        records = []
        name, path = arch.resolve_matrix(cfg.matrix or arch.ffn_input or "")
        laser_experts.check_matrix(arch, name, path, cfg.expert)
        per_layer, pairs = {}, {}
        if (cfg.budget is not None or cfg.calibrate) and arch.expert_matrix(name):
            raise UserError("laser budget / calibrate cover dense matrices, not a MoE's experts")
        if cfg.calibrate:  # data-aware: the input statistics of every selected matrix, one pass
            mods = {i: matrix_module(model, arch, i, cfg.matrix)[2] for i in layers}
            pairs = whiten.matrix_whiteners(model, mods, cfg, ctx)
        if cfg.budget is not None:  # ranks of every layer at once, from all their singular values
            mats = (
                whiten.weighted_matrix(
                    matrix_module(model, arch, i, cfg.matrix)[2].weight.detach(), pairs.get(i), arch.conv1d
                )
                for i in layers
            )
            per_layer = dict(zip(layers, budget.laser_budget_ranks(mats, cfg.budget)))
        for i in track(layers, "laser", enabled=ctx.progress):
            t0 = time.perf_counter()
            if arch.expert_matrix(name):  # MoE: that matrix of every expert (or of one), router untouched
                records.append(laser_experts.reduce_experts(model, arch, i, name, cfg, ctx.device))
                continue
            name, path, mod = matrix_module(model, arch, i, cfg.matrix)
            weight = mod.weight
            m, n = weight.shape
            k = per_layer.get(i) or (cfg.rank if cfg.rank is not None else laser_rank((m, n), cfg.rho))
            if k > min(m, n):
                raise UserError(f"laser rank {k} exceeds min({m}, {n}) of {path}")
            w = weight.detach().to(ctx.device)
            if i in pairs:  # data-aware (methods/whiten.py)
                approx, left, right = whiten.lowrank(w, k, pairs[i], arch.conv1d)
                factorised.keep_lowrank(ctx, i, path, w, k, cfg, arch.conv1d, factors=(left, right))
            else:
                approx = truncated_svd(w, k, method=cfg.svd, seed=cfg.seed)
                factorised.keep_lowrank(ctx, i, path, w, k, cfg, arch.conv1d)
            rel = (
                torch.linalg.vector_norm((w - approx).double()) / torch.linalg.vector_norm(w.double())
            ).item()
            with torch.no_grad():
                weight.copy_(approx.to(weight.device, weight.dtype))
            records.append(
                {
                    "layer": i,
                    "matrix": path,
                    "shape": [m, n],
                    "rank": k,
                    "params_before": m * n,
                    "params_after": k * (m + n),
                    "compression_rate": m * n / (k * (m + n)),
                    "rel_error": rel,
                    "seconds": time.perf_counter() - t0,
                }
            )
        return {
            "layers": records,
            "summary": {
                "matrix": records[0]["matrix"],
                "matrix_name": name,
                "layers": layers,
                "mean_rel_error": sum(r["rel_error"] for r in records) / len(records),
            },
        }

    def touched_modules(self, arch, step: dict) -> list[str]:
        name, path = arch.resolve_matrix(step.get("matrix") or arch.ffn_input or "")
        return [arch.experts] if arch.expert_matrix(name) else [path]

    def streams(self, cfg: LaserConfig) -> bool:
        return cfg.budget is None  # a budget allocates over all layers: not one layer at a time

    def check_factorised(self, cfg: LaserConfig, arch=None) -> None:
        factorised.check_laser(cfg, arch)

    def check_search(self, options: dict) -> None:
        for rho in options.get("rhos") or ():
            if not 0 < rho <= 1:
                raise UserError(f"laser rho must lie in (0, 1], got {rho}")

    def columns(self, arch, options: dict) -> tuple[str, list[Column]]:
        self.check_search(options)
        matrices = options.get("matrices") or (arch.ffn_input,)
        rhos = options.get("rhos") or RHOS
        several = len(matrices) > 1
        cols = [
            Column(f"{m} {rho:g}" if several else f"{rho:g}", {"matrix": m, "rho": rho})
            for m in matrices
            for rho in rhos
        ]
        return ("matrix, rho" if several else f"{matrices[0]} rho"), cols

    def concrete_step(self, model, arch, layer: int, options: dict) -> dict:
        """LASER's rho becomes the integer rank it keeps; the matrix its own name."""
        name = arch.resolve_matrix(options["matrix"] or "")[0]
        if arch.expert_matrix(name):
            shape = laser_experts.expert_shape(model, arch, layer, name)
        else:
            name, _, mod = matrix_module(model, arch, layer, options["matrix"])
            shape = tuple(mod.weight.shape)
        rank = laser_rank(shape, options["rho"])
        return registry.canonical_step(NAME, {"layers": [layer], "matrix": name, "rank": rank})

    def describe(self, step: dict) -> str:
        amount = f"rank {step['rank']}" if step.get("rank") else f"rho {step['rho']}"
        return f"laser L{layers_label(step)} {step['matrix']} {amount}"

    def settings_label(self, step: dict) -> str:
        return f"rank {step['rank']}" if step.get("rank") else ""


registry.register(Laser())
