"""LASER on mixture-of-experts FFNs (Mixtral, Qwen3-MoE): each expert's matrix is rank-reduced on its own.

transformers (>= 5) keeps a layer's experts in fused parameters, `gate_up_proj` (E, 2I, D) = every
expert's [gate; up] and `down_proj` (E, D, I); the ArchSpec's `expert_matrices` say which rows of
which parameter an own name (`experts.gate`, `experts.up`, `experts.down`) means. A step changes that
matrix of every expert, or of one (`expert: N`), by exact (or seeded randomised) SVD, each with the
same rank. The router is never changed: naming it is an error.
"""

from __future__ import annotations

import time

import torch

from tensorllm.archs import ArchSpec, blocks, find_module, get_module
from tensorllm.base.errors import UserError
from tensorllm.tensor.svd import laser_rank, truncated_svd


def check_matrix(arch: ArchSpec, own: str, path: str, expert: int | None) -> None:
    """Refuse the router, and an expert index given for a matrix that is not an expert's."""
    if arch.router and (path == arch.router or path.startswith(arch.router + ".")):
        raise UserError(
            f"{path} is the {arch.name} router: LASER never changes it "
            "(experts.gate, experts.up or experts.down are the experts' matrices)"
        )
    if expert is not None and arch.expert_matrix(own) is None:
        raise UserError(
            f"'expert' applies to the experts' matrices (experts.gate, experts.up, experts.down), not {own}"
        )


def expert_parameter(model, arch: ArchSpec, layer: int, own: str) -> tuple[torch.nn.Parameter, slice, str]:
    """(the fused parameter, the rows of each expert that are `own`, a label such as
    'mlp.experts.gate_up_proj[up]') in block `layer`."""
    param_path, part, parts = arch.expert_matrix(own)
    block = blocks(model, arch)[layer]
    if find_module(block, arch.experts) is None:
        raise UserError(
            f"layer {layer} of this {arch.name} has a dense FFN, not experts "
            "(address its matrices by module path, e.g. mlp.up_proj)"
        )
    param = get_module(block, param_path)  # (E, out, in)
    rows = param.shape[1] // parts
    return param, slice(part * rows, (part + 1) * rows), f"{param_path}[{own.split('.', 1)[1]}]"


def expert_shape(model, arch: ArchSpec, layer: int, own: str) -> tuple[int, int]:
    """(out, in) of one expert's matrix `own`."""
    param, rows, _ = expert_parameter(model, arch, layer, own)
    return rows.stop - rows.start, param.shape[2]


def reduce_experts(model, arch: ArchSpec, layer: int, own: str, cfg, device: torch.device) -> dict:
    """Rank-reduce matrix `own` of every expert (or of `cfg.expert`) in block `layer`; the report record."""
    t0 = time.perf_counter()
    param, rows, label = expert_parameter(model, arch, layer, own)
    n_experts = param.shape[0]
    if cfg.expert is not None and not 0 <= cfg.expert < n_experts:
        raise UserError(f"expert {cfg.expert} does not exist: layer {layer} has experts 0..{n_experts - 1}")
    experts = list(range(n_experts)) if cfg.expert is None else [cfg.expert]
    m, n = rows.stop - rows.start, param.shape[2]
    k = cfg.rank if cfg.rank is not None else laser_rank((m, n), cfg.rho)
    if k > min(m, n):
        raise UserError(f"laser rank {k} exceeds min({m}, {n}) of {label}")
    err2 = norm2 = 0.0
    for e in experts:
        w = param[e, rows].detach().to(device)  # (m, n): expert e's matrix
        approx = truncated_svd(w, k, method=cfg.svd, seed=cfg.seed)
        err2 += float(torch.linalg.vector_norm((w - approx).double()) ** 2)
        norm2 += float(torch.linalg.vector_norm(w.double()) ** 2)
        with torch.no_grad():
            param[e, rows] = approx.to(param.device, param.dtype)
    before, after = len(experts) * m * n, len(experts) * k * (m + n)
    return {
        "layer": layer,
        "matrix": label,
        "experts": experts,
        "shape": [m, n],
        "rank": k,
        "params_before": before,
        "params_after": after,
        "compression_rate": before / after,
        "rel_error": (err2 / norm2) ** 0.5 if norm2 else 0.0,
        "seconds": time.perf_counter() - t0,
    }
