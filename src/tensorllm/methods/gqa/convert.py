"""Plan and apply the conversion of one model: calibrate, group, align, permute, merge.

`plan_layer` is the per-layer recipe (weights + input second moment -> aligned and merged
weights plus numbers for the report); `convert` runs it over every layer and, when asked,
the gated recovery fine-tune (finetune.py).
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

import tensorllm.methods.gqa.align as A
import tensorllm.methods.gqa.metrics as M
from tensorllm.archs import ArchSpec, blocks, find_module, head_layout, rotary_dims
from tensorllm.attention import AttnWeights, read_attention, set_kv_heads, write_attention
from tensorllm.base.errors import UserError
from tensorllm.base.progress import track
from tensorllm.methods.gqa.calibrate import LayerStats, calibration_stats, cross_products
from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.methods.gqa.grouping import contiguous, partition
from tensorllm.methods.gqa.heads import merge_kv_heads, permute_kv_heads, transform_heads
from tensorllm.models.expand_kv import repeat_heads


@dataclass
class LayerPlan:
    unit: str  # what the groups index: "kv_head" (of the input model) or "query_head" (after expansion)
    groups: list[list[int]]  # per new K/V head, the old heads it merges (in the new order)
    aligned: AttnWeights  # permuted + aligned, same function as the input, float64
    merged: AttnWeights | None  # kv_heads = G, float64 (None: plan_layer(merge=False))
    record: dict  # JSON-able numbers for the report


def check_convertible(model: nn.Module, arch: ArchSpec, cfg: GQAConfig) -> tuple[int, int]:
    """Raise UserError unless `model` can become `cfg.kv_heads`-head GQA; return (H, Hkv)."""
    if not arch.supports_gqa:
        raise UserError(
            f"{arch.name} checkpoints have no separate K/V projections with a K/V head count, "
            "so they cannot be converted to grouped-query attention"
        )
    _, H, Hkv, _ = head_layout(model.config)
    G = cfg.kv_heads
    if H % G:
        raise UserError(f"kv_heads={G} does not divide the {H} query heads")
    if G >= Hkv:
        raise UserError(f"kv_heads={G} must be fewer than the model's {Hkv} K/V heads")
    if arch.qk_norm_span == "projection" and find_module(blocks(model, arch)[0], arch.k_norm) is not None:
        raise UserError(
            f"{arch.name} normalises keys over the whole K projection (one RMS over all {Hkv} "
            "K/V heads), which merging K/V heads cannot keep: no grouped-query conversion"
        )
    return H, Hkv


def key_planes(model: nn.Module, arch: ArchSpec, head_dim: int) -> A.Planes:
    """The key transforms RoPE allows (before any q/k norm is taken into account: `layer_key_planes`)."""
    rdims = rotary_dims(model.config, head_dim) if arch.rope else 0
    return A.Planes.for_rope(head_dim, rdims, arch.rope)


def qk_norm_scales(w: AttnWeights) -> torch.Tensor | None:
    """Every q/k norm weight of a layer, one row per head ((H + Hkv), d), or None without q/k norms. A
    (1 + w) norm (Gemma) has scales equal where its weights are, so the raw weights decide alike."""
    rows = [t.reshape(-1, w.head_dim) for t in (w.qn, w.kn) if t is not None]
    return torch.cat([r.to(rows[0].dtype) for r in rows]) if rows else None


def layer_key_planes(planes: A.Planes, w: AttnWeights, arch: ArchSpec) -> A.Planes:
    """The key transforms of one layer that keep the model exactly: RoPE's, restricted to those that
    commute with the layer's q/k norms (align.Planes.restrict: the derivation)."""
    scales = qk_norm_scales(w)
    if scales is None:
        return planes
    return planes.restrict(scales, centred=arch.qk_norm_kind == "layer")


def _to64(w: AttnWeights, device: torch.device) -> AttnWeights:
    f = lambda t: None if t is None else t.to(device=device, dtype=torch.float64)  # noqa: E731
    return w.with_(
        q=f(w.q),
        k=f(w.k),
        v=f(w.v),
        o=f(w.o),
        bq=f(w.bq),
        bk=f(w.bk),
        bv=f(w.bv),
        bo=f(w.bo),
        qn=f(w.qn),
        kn=f(w.kn),
    )  # float64 holds every float32 / bf16 norm weight exactly


def _energy(blocks_: torch.Tensor) -> float:
    return float(torch.diagonal(blocks_, dim1=-2, dim2=-1).sum(-1).diagonal().sum())


def _kept(sub: torch.Tensor, energy: float, T: torch.Tensor) -> float:
    """Share of activation energy the merged heads keep: sum_g m ||mean_g||^2 / sum_h ||a_h||^2.

    For a mean merge this is 1 - (sum_h ||T_h a_h - mean_g||^2) / (sum_h ||a_h||^2).
    sub: (G, m, m, d, d) (align.group_blocks); energy: sum_h ||a_h||^2; T: (G, m, d, d), per member.
    """
    return float(A.kept_energy(sub, T).sum()) / energy if energy > 0 else 1.0


def _within(S: torch.Tensor, groups: list[list[int]]) -> float:
    """Mean score of the pairs inside the groups (1.0 when every group holds one head)."""
    S = S.detach().cpu()
    vals = [float(S[i, j]) for g in groups for a, i in enumerate(g) for j in g[a + 1 :]]
    return sum(vals) / len(vals) if vals else 1.0


def grouping_scores(
    w: AttnWeights,
    stats: LayerStats,
    blocks_kv: tuple[torch.Tensor, torch.Tensor],
    planes: tuple[A.Planes | None, A.Planes | None],
    metric: str,
    on: str,
) -> torch.Tensor:
    """(n, n) scores the grouping maximises (metrics.grouping_scores) from `stats`: `blocks_kv`, the
    (n, n, d, d) key and value cross blocks over every token, unless sink tokens are left out."""
    n, d = w.kv_heads, w.head_dim
    if stats.body is not None and metric != "cosine":
        blocks_kv = tuple(
            A.cross_blocks(cross_products(W, b, stats.body), n, d) for W, b in ((w.k, w.bk), (w.v, w.bv))
        )
    units = (None, None)
    if metric == "cosine":
        units = tuple(M.expand_unit_blocks(u, n, d) for u in (stats.unit_k, stats.unit_v))
    return M.grouping_scores(metric, on, blocks_kv, units, stats.grouping_tokens, planes)


@contextmanager
def _one_cpu_thread(device: torch.device):
    """The grouping/alignment math is many tiny (d x d) ops: on CPU, thread hand-offs cost more than they
    save."""
    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def plan_layer(
    w: AttnWeights,
    gram: torch.Tensor | LayerStats,
    kv_heads: int,
    planes_k: A.Planes,
    *,
    grouping: str = "similarity",
    align: bool = True,
    seed: int = 0,
    restarts: int = 16,
    iters: int = 20,
    merge: bool = True,
    metric: str = "energy",
    on: str = "both",
) -> LayerPlan:
    """Group, align, permute and (unless merge=False) merge one layer's heads from its input second
    moment `gram` (or the `LayerStats` the calibration streamed: the grouping's own statistics);
    `metric` and `on` choose the grouping's score (GQAConfig.grouping_metric / grouping_on)."""
    stats = gram if isinstance(gram, LayerStats) else LayerStats(gram)
    if metric == "cosine" and stats.unit_k is None:
        raise ValueError("the cosine grouping metric needs LayerStats with unit cross products")
    gram = stats.gram
    dev = gram.device
    t0 = time.perf_counter()
    params_before = w.num_params()
    w = _to64(w, dev)
    unit = "kv_head"
    if w.kv_heads % kv_heads:  # groups must hold whole K/V heads: work on the multi-head view
        g = w.heads // w.kv_heads
        w = w.with_(
            k=repeat_heads(w.k, w.kv_heads, g),
            v=repeat_heads(w.v, w.kv_heads, g),
            bk=repeat_heads(w.bk, w.kv_heads, g),
            bv=repeat_heads(w.bv, w.kv_heads, g),
            kn=repeat_heads(w.kn, w.kv_heads, g),
            kv_heads=w.heads,
        )
        unit = "query_head"
    n, d = w.kv_heads, w.head_dim
    CK = A.cross_blocks(cross_products(w.k, w.bk, gram), n, d)  # (n, n, d, d)
    CV = A.cross_blocks(cross_products(w.v, w.bv, gram), n, d)
    planes_v = A.Planes.orthogonal(d)
    eye = torch.eye(d, dtype=torch.float64, device=dev).expand(n, d, d).clone()
    tk, tv = eye.clone(), eye.clone()
    with _one_cpu_thread(dev):
        SK = A.similarity(CK, planes_k if align else None)
        SV = A.similarity(CV, planes_v if align else None)
        if (metric, on, stats.body) == ("energy", "both", None):
            S = SK + SV  # the first metric's scores, as they always were
        else:
            S = grouping_scores(
                w, stats, (CK, CV), (planes_k, planes_v) if align else (None, None), metric, on
            )
        groups = (
            partition(S, kv_heads, seed=seed, restarts=restarts)
            if grouping == "similarity"
            else contiguous(n, kv_heads)
        )
        at = torch.tensor(groups, device=dev)  # (G, m)
        subK, subV = A.group_blocks(CK, groups), A.group_blocks(CV, groups)  # (G, m, m, d, d)
        ek, ev = _energy(CK), _energy(CV)
        if align:  # every group at once: (G, m, d, d) transforms
            tk[at] = A.align_groups(subK, planes_k, iters)
            tv[at] = A.align_groups(subV, planes_v, iters)
        kk, kv = _kept(subK, ek, tk[at]), _kept(subV, ev, tv[at])
        record = {
            "unit": unit,
            "groups": groups,
            "key_energy_kept": kk,
            "value_energy_kept": kv,
            "key_similarity": _within(SK, groups),
            "value_similarity": _within(SV, groups),
        }
        if (metric, on, stats.body) != ("energy", "both", None):
            record.update(grouping_metric=metric, grouping_on=on, grouping_score=_within(S, groups))
        if align:
            record.update(
                key_energy_kept_unaligned=_kept(subK, ek, eye[at]),
                value_energy_kept_unaligned=_kept(subV, ev, eye[at]),
            )
    order = [h for g in groups for h in g]
    aligned = permute_kv_heads(transform_heads(w, tk if align else None, tv if align else None), order)
    merged = merge_kv_heads(aligned, kv_heads) if merge else None
    lost = ((1 - kk) * ek + (1 - kv) * ev) / max(ek + ev, 1e-300)
    params_after = w.q.numel() + w.o.numel() + 2 * kv_heads * d * w.hidden  # q, o and G K/V heads
    # the generic fields every method reports (see cli.print_step_tables)
    record.update(
        params_before=params_before,
        params_after=params_after,
        compression_rate=params_before / params_after,
        rel_error=max(lost, 0.0) ** 0.5,
        seconds=time.perf_counter() - t0,
    )
    return LayerPlan(unit, groups, aligned, merged, record)


def conversion_summary(
    records: list[dict], layout: tuple[int, int, int], kv_heads: int, tokens, t_calib: float, t_merge: float
) -> dict:
    """The report's summary of a conversion from its per-layer records; layout = (H, Hkv, d) before."""
    H, Hkv, d = layout
    return {
        "kv_heads_before": Hkv,
        "kv_heads_after": kv_heads,
        "query_heads": H,
        "head_dim": d,
        "layers": len(records),
        "calib_tokens": int(tokens.numel()),
        "calib_sequences": int(tokens.shape[0]),
        "mean_key_energy_kept": sum(r["key_energy_kept"] for r in records) / len(records),
        "mean_value_energy_kept": sum(r["value_energy_kept"] for r in records) / len(records),
        "seconds_calibration": t_calib,
        "seconds_group_align_merge": t_merge,
    }


def convert(
    model: nn.Module,
    arch: ArchSpec,
    cfg: GQAConfig,
    tokens: torch.Tensor,
    *,
    train: torch.Tensor | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    monitor=None,
) -> dict:
    """Convert `model` in place to `cfg.kv_heads` K/V heads using calibration `tokens` (n_seq, seq_len).

    With `cfg.train_steps`, the recovery fine-tune trains on `train` (m_seq, seq_len), or on the
    calibration tokens when it is None; `monitor(model) -> float` watches it (finetune.finetune)."""
    cfg.validate()
    _, H, Hkv, d = head_layout(model.config)
    check_convertible(model, arch, cfg)
    device = device or next(model.parameters()).device
    t0 = time.perf_counter()
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if cfg.train_steps else None
    grams = calibration_stats(
        model,
        arch,
        tokens,
        batch_size=cfg.batch_size,
        device=device,
        progress=progress,
        sink_tokens=cfg.sink_tokens,
        unit=cfg.grouping == "similarity" and cfg.grouping_metric == "cosine",
    )
    t_calib = time.perf_counter() - t0
    model_dtype = next(model.parameters()).dtype
    if teacher is not None and model_dtype != torch.float32:
        # float32 master copies of everything the fine-tune trains (AdamW moments follow the parameters),
        # before the aligned weights are written, so they are not rounded either; the teacher stays as
        # loaded, and the exported model goes back to `model_dtype`. Costs the student's size once more.
        model.float()
    planes_k = key_planes(model, arch, d)
    records, shared, n_aligned = [], [], Hkv
    layers = range(len(grams))
    for i in track(layers, "gqa: grouping, aligning, merging", enabled=progress):
        w = read_attention(model, arch, i)
        planes = layer_key_planes(planes_k, w, arch)
        plan = plan_layer(
            w,
            grams[i],
            cfg.kv_heads,
            planes,
            grouping=cfg.grouping,
            align=cfg.align,
            seed=seed,
            restarts=cfg.restarts,
            iters=cfg.procrustes_iters,
            metric=cfg.grouping_metric,
            on=cfg.grouping_on,
        )
        grams[i] = None  # free the (D+1)^2 float64 sum as soon as it is used
        if teacher is None:
            write_attention(model, arch, i, plan.merged)
        else:  # the fine-tune starts from the function-preserving aligned heads plus the merged ones
            write_attention(model, arch, i, plan.aligned)
            m = plan.merged
            shared.append((m.k, m.bk, m.v, m.bv))
            n_aligned = plan.aligned.kv_heads
        records.append({"layer": i, **plan.record})
    t_merge = time.perf_counter() - t0 - t_calib
    summary = conversion_summary(records, (H, Hkv, d), cfg.kv_heads, tokens, t_calib, t_merge)
    if teacher is None:
        set_kv_heads(model, arch, cfg.kv_heads)
    else:
        from tensorllm.methods.gqa.finetune import finetune

        if n_aligned != Hkv:
            set_kv_heads(model, arch, n_aligned)
        data = tokens if train is None else train
        summary["finetune"] = finetune(
            model, arch, teacher, shared, data, cfg, seed=seed, progress=progress, monitor=monitor
        )
        summary["finetune"].update(
            train_tokens=int(data.numel()), model_dtype=str(model_dtype).removeprefix("torch.")
        )
        del teacher
        model.to(model_dtype)  # the export keeps the checkpoint's dtype
    summary["seconds"] = time.perf_counter() - t0
    return {"layers": records, "summary": summary}
