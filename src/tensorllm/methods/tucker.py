"""TensorLLM: multi-head tensorisation of attention + Tucker with shared factors (arXiv 2501.15674).

Per selected layer, the per-head blocks of W_Q, W_K, W_V and W_O^T (each d_model x d_head, the
paper's row-vector orientation) are stacked into one tensor and decomposed with factors that all
heads share and one core per head; the dense weights are rebuilt in place (denoising: the
architecture is unchanged).

Variants (all the same unit, `variant=`):
- `multihead` (the paper): tensor (D, d, 2g+2, Hkv), modes 0-2 compressed, head mode untouched.
  For multi-head attention (g = 1) this is exactly the paper's D x d x 4 x h tensor, mode-3 order
  (Q, K, V, O^T).
  **Grouped-query attention** (Hkv < H, g = H / Hkv): one slice per K/V group holding its g query
  heads, its one K head, its one V head and its g output heads, mode-3 order
  (Q_1..Q_g, K, V, O^T_1..O^T_g). Every K/V head still exists exactly once, so the rebuilt model
  stays GQA (no duplicated K/V heads), and all blocks still share U1 (d_model), U2 (d_head) and
  U3 (block type). U3 mixes a group's query slots, so each group's query heads are first put in an
  order read off their weights (tucker_tensor.canonical_query_order; back in place afterwards): the
  result does not depend on how a checkpoint orders the query heads inside a group. Compression rate:
      (2 D d (H + Hkv)) / (D R1 + d R2 + (2g+2) R3 + Hkv R1 R2 R3)
  which equals the paper's 4 D^2 / (D R1 + d R2 + 4 R3 + h R1 R2 R3) when g = 1 and D = h d.
- `single`: the ablation on one matrix type (`matrix` = q, k, v or o): tensor (D, d, heads),
  ranks (R1, R2), one core per head.
- `trawl`: TRAWL-style, one shared core and no head mode: tensor (D, Hkv*d, 2g+2)
  (= D x D x 4 for multi-head attention), ranks (R1, R2, R3).

Biases (BERT, RoBERTa, GPT-2, Qwen2) are left unchanged: the paper tensorises weights only, a
bias is a constant shift outside the shared input/output subspaces, and it holds ~0.1% of the
layer's parameters. tests/methods/test_tucker.py checks they are bit-identical after compression.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch

from tensorllm.archs import blocks
from tensorllm.attention import AttnWeights, read_attention, write_attention
from tensorllm.base.errors import UserError
from tensorllm.base.layers import one_layer_as_list, parse_layers
from tensorllm.base.progress import track
from tensorllm.methods import budget, factorised, registry, whiten
from tensorllm.methods.registry import Column, Flag, Method, layers_label, parse_floats, split_names
from tensorllm.methods.tucker_tensor import (
    auto_ranks,
    canonical_query_order,
    compressed_modes,
    from_tensor,
    inverse_order,
    parse_rank_settings,
    parse_ranks,
    permute_query_heads,
    rank_label,
    ranks_for_rate,
    to_tensor,
    tucker_params,
)
from tensorllm.tensor.tucker import hooi, reconstruct

NAME = "tucker"

Ranks = tuple[int, ...] | tuple[float, ...] | str


@dataclass
class TuckerConfig:
    """layers: e.g. 9, [9], "0,3,7-9", "all".
    ranks: explicit integers (R1, R2, R3), fractions of each mode in (0, 1], or "auto" (data-free,
        from each unfolding's singular values against a noise threshold). Exclusive with `rate`.
    rate: target compression rate of each layer's attention (the paper's formula); the largest
        ranks (proportional to the mode sizes) reaching it are used.
    variant: multihead (paper) | single (one matrix type, see `matrix`) | trawl (one core, no head mode).
    budget: instead of ranks or rate, keep this fraction (0, 1] of the selected layers' parameters in
        total, each layer's ranks allocated from its error curve (methods/budget.py).
    calibrate: data-aware Tucker: fit the layer's outputs on this many calibration tokens (mode 1
        whitened with the input second moment, methods/whiten.py) of `calib_file` (text / JSON / JSONL;
        None: the built-in English text) instead of the weights; None (default): data-free, the paper's.
    """

    layers: int | str | tuple[int, ...] | None = None
    ranks: Ranks | None = None
    rate: float | None = None
    budget: float | None = registry.added_later()
    calibrate: int | None = registry.added_later()
    calib_file: str | None = registry.added_later()
    variant: Literal["multihead", "single", "trawl"] = "multihead"
    matrix: Literal["q", "k", "v", "o"] | None = None
    n_iter_max: int = 100
    tol: float = 1e-5
    compute_dtype: Literal["float32", "float64"] = "float64"

    def __post_init__(self) -> None:
        self.layers = one_layer_as_list(self.layers)

    def validate(self) -> None:
        if self.layers is None:
            raise UserError("tucker needs 'layers' (e.g. 9, 0,3,7-9 or all)")
        if self.budget is not None:  # whole-model budget: no ranks, no rate
            if not 0 < self.budget <= 1:  # `not <` also catches NaN
                raise UserError(f"tucker budget must lie in (0, 1], got {self.budget}")
            if self.ranks is not None or self.rate is not None:
                raise UserError("tucker takes one of 'ranks', 'rate' and 'budget', not several")
        elif (self.ranks is None) == (self.rate is None):
            raise UserError("tucker needs exactly one of 'ranks' and 'rate'")
        if self.calibrate is not None and self.calibrate < 1:
            raise UserError(f"tucker calibrate is a number of calibration tokens >= 1, got {self.calibrate}")
        if self.calib_file is not None and self.calibrate is None:
            raise UserError("tucker calib_file needs calibrate (the number of calibration tokens)")
        if isinstance(self.ranks, str) and self.ranks != "auto":
            raise UserError(f"tucker ranks must be integers, fractions or 'auto', got '{self.ranks}'")
        if isinstance(self.ranks, tuple):
            want = 2 if self.variant == "single" else 3
            if len(self.ranks) != want:
                raise UserError(f"tucker variant '{self.variant}' takes {want} ranks, got {len(self.ranks)}")
            if not all(r > 0 for r in self.ranks):  # `not >` also catches NaN
                raise UserError(f"tucker ranks must be positive, got {list(self.ranks)}")
            if any(isinstance(r, float) for r in self.ranks) and any(r > 1 for r in self.ranks):
                raise UserError(f"fractional ranks must lie in (0, 1], got {list(self.ranks)}")
        if self.rate is not None and not self.rate >= 1:
            raise UserError(f"compression rate must be >= 1, got {self.rate}")
        if (self.variant == "single") != (self.matrix is not None):
            raise UserError("tucker variant 'single' needs 'matrix' (q, k, v or o), and only it takes one")
        if self.n_iter_max < 0 or not self.tol >= 0:
            raise UserError("tucker n_iter_max and tol must be >= 0")


def resolve_ranks(cfg: TuckerConfig, t: torch.Tensor, before: int) -> tuple[int, ...]:
    modes = compressed_modes(cfg.variant)
    sizes = [t.shape[m] for m in modes]
    if cfg.rate is not None:
        return ranks_for_rate(tuple(t.shape), modes, cfg.rate, before)
    if cfg.ranks == "auto":
        return auto_ranks(t, modes)
    if any(isinstance(r, float) for r in cfg.ranks):
        return tuple(max(1, math.ceil(f * s - 1e-9)) for f, s in zip(cfg.ranks, sizes))
    for r, s, m in zip(cfg.ranks, sizes, modes):
        if r > s:
            raise UserError(
                f"rank {r} is larger than mode {m + 1} of the tensor (size {s}; shape {tuple(t.shape)})"
            )
    return tuple(int(r) for r in cfg.ranks)


# ---------------------------------------------------------------- the transform


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    n = torch.linalg.vector_norm(a).item()
    return torch.linalg.vector_norm(a - b).item() / n if n else 0.0


def layer_tensor(w: AttnWeights, cfg: TuckerConfig, device: torch.device | None = None):
    """(the weights in the compute dtype on `device` with each group's query heads in canonical order,
    that order (None: as stored), their tensor of `cfg.variant`)."""
    dtype = torch.float64 if cfg.compute_dtype == "float64" else torch.float32
    wd = w.with_(
        q=w.q.to(device, dtype), k=w.k.to(device, dtype), v=w.v.to(device, dtype), o=w.o.to(device, dtype)
    )
    order = canonical_query_order(wd, cfg.variant)
    if order is not None:  # the tensor must not depend on where a group's query heads are stored
        wd = permute_query_heads(wd, order)
    return wd, order, to_tensor(wd, cfg.variant, cfg.matrix)


def compress_layer(
    w: AttnWeights, cfg: TuckerConfig, device: torch.device, keep=None, whitening=None
) -> tuple[AttnWeights, dict]:
    """Decompose and rebuild one layer's attention; return new weights and the layer's record.
    `whitening` (S, S^-1) fits the tensor with mode 1 weighted by the input statistics (methods/whiten.py).
    `keep(result, weights)`, when given, receives the Tucker result (methods/factorised.py) and the
    weights it decomposes; the rebuilt weights then stay in that canonical query order (the same
    function, biases and q norms moved along) so that they agree with the kept factors."""
    t0 = time.perf_counter()
    wd, order, t = layer_tensor(w, cfg, device)
    modes = compressed_modes(cfg.variant)
    before = t.numel()
    ranks = resolve_ranks(cfg, t, before)
    fit = whiten.fit_tensor(t, whitening)
    res = hooi(fit, ranks, modes, n_iter_max=cfg.n_iter_max, tol=cfg.tol, compute_dtype=t.dtype)
    if whitening is not None:
        res = whiten.unwhiten(res, whitening[1])  # U1 <- S^-1 U1: the decomposition of t itself
    if keep is not None:
        keep(res, wd)
    new = from_tensor(reconstruct(res), wd, cfg.variant, cfg.matrix)
    after = tucker_params(tuple(t.shape), modes, ranks)
    record = {
        "tensor_shape": list(t.shape),
        "ranks": list(ranks),
        "params_before": before,
        "params_after": after,
        "compression_rate": before / after,
        "rel_error": _rel(t, reconstruct(res)),
        "rel_error_per_matrix": {n: _rel(getattr(wd, n), getattr(new, n)) for n in ("q", "k", "v", "o")},
        "hooi_iterations": res.n_iter,
        "converged": res.converged,
        "seconds": time.perf_counter() - t0,
    }
    if order is not None:
        record["query_order"] = order  # canonical slot n of each group held query head order[n]
        if keep is None:
            new = permute_query_heads(new, inverse_order(order))  # back where the model stores them
    return new, record


# ---------------------------------------------------------------- what the CLI and the search ask


class Tucker(Method):
    name, config_cls = NAME, TuckerConfig
    searchable = streamable = True
    version = 2  # 2 (2026-12-01): each group's query heads in canonical order before the tensor is built
    data_free_column = "auto"
    compress_flags = (
        Flag("ranks", "tucker: R1,R2,R3 integers, fractions of each mode, or auto.", parse=parse_ranks),
        Flag("rate", "tucker: target compression rate of each layer's attention.", type=float),
        Flag(
            "budget",
            "tucker: keep this fraction of the layers' attention parameters, ranks per layer.",
            type=float,
        ),
        Flag(
            "calibrate",
            "tucker: data-aware: fit the outputs on this many calibration tokens (default: data-free).",
            type=int,
        ),
        Flag("variant", "tucker: multihead (default) | single | trawl."),
        Flag("matrix", "tucker variant single: q, k, v or o."),
    )
    search_flags = (
        Flag(
            "ranks",
            "tucker: rank settings separated by ';', each R1,R2,R3 integers, fractions of each mode, "
            "or auto: '144,48,4;0.5,0.5,1;auto'.",
            parse=parse_rank_settings,
        ),
        Flag(
            "rates",
            "tucker: target compression rates, one column each: 5,20,50.",
            parse=lambda s: parse_floats(s, "--rates"),
        ),
        Flag("variant", "tucker: multihead (paper) | single | trawl."),
        Flag("matrix", "tucker variant single: q, k, v or o", key="matrices", parse=split_names),
    )

    def apply(self, model, arch, cfg: TuckerConfig, ctx) -> dict:
        """TensorLLM multi-head Tucker denoising of the attention of the selected layers."""
        layers = parse_layers(cfg.layers, len(blocks(model, arch)))
        records = []
        per_layer = {}
        pairs = whiten.attention_whiteners(model, arch, layers, cfg, ctx) if cfg.calibrate else {}
        if cfg.budget is not None:  # ranks of every layer at once, from all their error curves
            fits = (layer_tensor(read_attention(model, arch, i), cfg, ctx.device)[-1] for i in layers)
            tensors = (whiten.fit_tensor(t, pairs.get(i)) for i, t in zip(layers, fits))
            ranks = budget.tucker_budget_ranks(tensors, compressed_modes(cfg.variant), cfg.budget)
            per_layer = {i: dataclasses.replace(cfg, ranks=r, budget=None) for i, r in zip(layers, ranks)}
        for i in track(layers, "tucker", enabled=ctx.progress):
            keep = factorised.tucker_keeper(ctx, i)
            w, cfg_i = read_attention(model, arch, i), per_layer.get(i, cfg)
            new, rec = compress_layer(w, cfg_i, ctx.device, keep, pairs.get(i))
            write_attention(model, arch, i, new)
            records.append({"layer": i, **rec})
        total_before = sum(r["params_before"] for r in records)
        total_after = sum(r["params_after"] for r in records)
        return {
            "layers": records,
            "summary": {
                "variant": cfg.variant,
                "layers": layers,
                "compression_rate": total_before / total_after,
                "mean_rel_error": sum(r["rel_error"] for r in records) / len(records),
                **({"budget": cfg.budget, "kept_fraction": total_after / total_before} if per_layer else {}),
            },
        }

    def streams(self, cfg: TuckerConfig) -> bool:
        return cfg.budget is None  # a budget allocates over all layers: not one layer at a time

    def touched_modules(self, arch, step: dict) -> list[str]:
        return [arch.o] + ([arch.q, arch.k, arch.v] if arch.qkv == "separate" else [arch.fused])

    def check_factorised(self, cfg: TuckerConfig, arch=None) -> None:
        factorised.check_tucker(cfg, arch)

    def check_search(self, options: dict) -> None:
        if not (options.get("ranks") or options.get("rates")):
            raise UserError(
                "a tucker search needs --ranks (e.g. '144,48,4;0.5,0.5,1;auto') or --rates (e.g. 5,20,50)"
            )
        if (options.get("variant", "multihead") == "single") != (len(options.get("matrices") or ()) == 1):
            raise UserError(
                "tucker variant 'single' needs exactly one --matrix (q, k, v or o), and only it takes one"
            )

    def columns(self, arch, options: dict) -> tuple[str, list[Column]]:
        self.check_search(options)
        variant = options.get("variant", "multihead")
        extra = {"variant": variant}
        if variant == "single":
            extra["matrix"] = options["matrices"][0]
        cols = [Column(rank_label(r), {"ranks": r, **extra}) for r in options.get("ranks") or ()]
        cols += [Column(f"rate {x:g}", {"rate": x, **extra}) for x in options.get("rates") or ()]
        return ("ranks (R1,R2)" if variant == "single" else "ranks (R1,R2,R3)"), cols

    def concrete_step(self, model, arch, layer: int, options: dict) -> dict:
        """One layer's Tucker step with its ranks resolved to integers on this model's weights."""
        cfg = registry.config_from_dict(NAME, {"layers": [layer], **options})
        _, _, t = layer_tensor(read_attention(model, arch, layer), cfg)
        try:
            ranks = resolve_ranks(cfg, t, t.numel())
        except UserError as exc:
            raise UserError(f"layer {layer}: {exc}") from None
        cfg = dataclasses.replace(cfg, ranks=tuple(int(r) for r in ranks), rate=None)
        return {"method": NAME, **registry.config_to_dict(cfg)}

    def describe(self, step: dict) -> str:
        ranks = step.get("ranks")
        shown = (
            ",".join(map(str, ranks))
            if isinstance(ranks, list)
            else (str(ranks) if ranks else f"rate {step['rate']}")
        )
        extra = "" if step.get("variant", "multihead") == "multihead" else f" {step['variant']}"
        return f"tucker L{layers_label(step)} ({shown}){extra}"

    def settings_label(self, step: dict) -> str:
        return ",".join(map(str, step["ranks"])) if isinstance(step.get("ranks"), list) else ""


registry.register(Tucker())
