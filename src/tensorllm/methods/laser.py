"""LASER: layer-selective rank reduction of one weight matrix (arXiv 2312.13558).

The chosen matrix of each selected layer is replaced by its rank-k SVD approximation,
k = max(1, floor(min(m, n) * rho)) or an explicit `rank`. Exact SVD by default; the reference
code's randomised SVD (`svd_lowrank`, 2 power iterations) is available only with a seed, because
without one its results depend on the run and the hardware.

`matrix` names a matrix of the architecture table (ffn_in, ffn_out, ffn_gate, q, k, v, o, qkv) or
any module path relative to a block (e.g. "mlp.up_proj").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from tensorllm.archs import blocks, get_module
from tensorllm.errors import UserError
from tensorllm.layers import one_layer_as_list, parse_layers
from tensorllm.methods.registry import register
from tensorllm.progress import track
from tensorllm.tensor.svd import laser_rank, truncated_svd


@dataclass
class LaserConfig:
    """layers: e.g. 27, [27], "20-29", "all".
    matrix: ffn_in (default), ffn_out, q, k, v, o, ... or a module path.
    rho: keep floor(min(m, n) * rho) singular values (LASER's rho); or rank: an explicit rank.
    svd: exact (default) | randomized (needs seed)."""

    layers: int | str | tuple[int, ...] | None = None
    matrix: str = "ffn_in"
    rho: float | None = None
    rank: int | None = None
    svd: Literal["exact", "randomized"] = "exact"
    seed: int | None = None

    def __post_init__(self) -> None:
        self.layers = one_layer_as_list(self.layers)

    def validate(self) -> None:
        if self.layers is None:
            raise UserError("laser needs 'layers' (e.g. 27 or 20-29)")
        if (self.rho is None) == (self.rank is None):
            raise UserError("laser needs exactly one of 'rho' and 'rank'")
        if self.rho is not None and not 0 < self.rho <= 1:
            raise UserError(f"laser rho must lie in (0, 1], got {self.rho}")
        if self.rank is not None and self.rank < 1:
            raise UserError(f"laser rank must be >= 1, got {self.rank}")
        if self.svd == "randomized" and self.seed is None:
            raise UserError("laser svd 'randomized' needs a seed (results would not be reproducible)")


@register("laser", LaserConfig)
def apply_laser(model, arch, cfg: LaserConfig, ctx) -> dict:
    """LASER rank reduction of one named matrix in each selected layer."""
    layers = parse_layers(cfg.layers, len(blocks(model, arch)))
    path = arch.matrix_paths().get(cfg.matrix, cfg.matrix)
    records = []
    for i in track(layers, "laser", enabled=ctx.progress):
        t0 = time.perf_counter()
        try:
            mod = get_module(blocks(model, arch)[i], path)
        except AttributeError:
            names = ", ".join(arch.matrix_paths())
            raise UserError(f"{arch.name} has no matrix '{cfg.matrix}' (named ones: {names}; or a module path)") from None
        weight = mod.weight
        m, n = weight.shape
        k = cfg.rank if cfg.rank is not None else laser_rank((m, n), cfg.rho)
        if k > min(m, n):
            raise UserError(f"laser rank {k} exceeds min({m}, {n}) of {path}")
        w = weight.detach().to(ctx.device)
        approx = truncated_svd(w, k, method=cfg.svd, seed=cfg.seed)
        rel = (torch.linalg.vector_norm((w - approx).double()) / torch.linalg.vector_norm(w.double())).item()
        with torch.no_grad():
            weight.copy_(approx.to(weight.device, weight.dtype))
        records.append({"layer": i, "matrix": path, "shape": [m, n], "rank": k, "params_before": m * n,
                        "params_after": k * (m + n), "compression_rate": m * n / (k * (m + n)),
                        "rel_error": rel, "seconds": time.perf_counter() - t0})
    return {"layers": records, "summary": {"matrix": path, "layers": layers,
                                           "mean_rel_error": sum(r["rel_error"] for r in records) / len(records)}}
