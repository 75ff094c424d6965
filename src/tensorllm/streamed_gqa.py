"""The streamed MHA -> GQA conversion (a `gqa` step without fine-tune), one decoder layer at a time.

The calibration tokens are cut as the in-memory path cuts them (methods/gqa/method.py). Everything
outside the blocks is made real on the device (embeddings, rotary tables), and one forward per batch
with every block replaced by a catcher records what each block receives: the first block's hidden
states, and every block's other arguments (masks, position embeddings; once per batch shape). Then per
layer: the block is loaded onto the device, each batch's hidden states go through it while its K/V
input's statistics accumulate (calibrate.LayerStats, as calibrate.calibration_stats sums them), the
outputs become the next layer's inputs, and the layer is grouped, aligned and merged from its
statistics (convert.plan_layer), then written.
The moments and hidden states equal the in-memory path's (each layer sees the original layers' outputs
there too), so the output is the same, tensor for tensor (tests/test_streamed_gqa.py).

Memory: one layer, one batch's activations, and the hidden states of the calibration text, kept on the
device when they take under half its free memory, else in CPU memory. A resumed run recomputes the
hidden states by running the original layers already written (read, not written again).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from tensorllm.archs import blocks, get_module, head_layout, text_config
from tensorllm.attention import read_attention, write_attention
from tensorllm.base.errors import UserError
from tensorllm.base.progress import track
from tensorllm.methods.gqa.calibrate import LayerStats
from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.methods.gqa.convert import (
    check_convertible,
    conversion_summary,
    key_planes,
    layer_key_planes,
    plan_layer,
)
from tensorllm.methods.gqa.method import text_tokens


def streams(cfg: GQAConfig) -> bool:
    """Whether this conversion can stream (the recovery fine-tune trains the whole model at once)."""
    return not cfg.train_steps


def out_config(sm, cfg: GQAConfig):
    """The converted checkpoint's config (its K/V head count), after the checks before work."""
    cfg.validate()
    if not streams(cfg):
        raise UserError(
            "the streamed gqa conversion has no recovery fine-tune (train_steps): run without --stream"
        )
    check_convertible(sm.model, sm.arch, cfg)
    config = copy.deepcopy(sm.config)
    setattr(text_config(config), sm.arch.kv_heads_key, cfg.kv_heads)
    return config


class _Stop(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for block i during the capture forward: records its arguments, passes its input on."""

    def __init__(self, i: int, last: bool, seen: dict):
        super().__init__()
        self.i, self.last, self.seen = i, last, seen

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.seen[self.i] = (args[1:], kwargs)
        if self.i == 0:
            self.seen["hidden"] = hidden
        if self.last:
            raise _Stop
        return hidden


def _capture(sm, batches: list[torch.Tensor], device, store) -> tuple[list[torch.Tensor], dict]:
    """(each batch's hidden states entering block 0, {batch shape: [block i's other arguments]})."""
    layers = blocks(sm.model, sm.arch)
    saved = list(layers)
    hidden, calls = [], {}
    try:
        for batch in batches:
            seen: dict = {}
            for i in range(len(layers)):
                layers[i] = _Catcher(i, i == len(layers) - 1, seen)
            try:
                sm.model.base_model(input_ids=batch.to(device), use_cache=False)
            except _Stop:
                pass
            hidden.append(seen["hidden"].to(store))
            calls.setdefault(tuple(batch.shape), [seen[i] for i in range(len(layers))])
    finally:
        for i, block in enumerate(saved):
            layers[i] = block
    return hidden, calls


def _through(block, i: int, hidden: list, shapes: list, calls: dict, device) -> None:
    """Run every batch's hidden states through block i, replacing them by its outputs."""
    for j, h in enumerate(hidden):
        args, kwargs = calls[shapes[j]][i]
        out = block(h.to(device), *args, **kwargs)
        hidden[j] = (out[0] if isinstance(out, (tuple, list)) else out).to(h.device)


@torch.no_grad()
def run(sm, cfg: GQAConfig, ctx, writer, state: dict, mark, timing: dict, progress: bool) -> dict:
    """Convert layer by layer from `state["next"]`; returns the step's result (as `convert` returns it)."""
    t0 = time.perf_counter()
    arch, device = sm.arch, ctx.device
    _, H, Hkv, d = head_layout(sm.config)
    D = head_layout(sm.config)[0]
    tokens = text_tokens(ctx.tokenizer, cfg).calib  # (n_seq, seq_len)
    seed = ctx.seed if cfg.seed is None else cfg.seed
    sm.materialize_outside_blocks(device)
    planes_k = key_planes(sm.model, arch, d)
    batches = list(torch.split(tokens, cfg.batch_size))
    itemsize = torch.empty((), dtype=sm.dtype).element_size()
    need = tokens.numel() * D * itemsize
    store = device if device.type != "cuda" or need < 0.5 * torch.cuda.mem_get_info(device)[0] else "cpu"
    hidden, calls = _capture(sm, batches, device, store)
    shapes = [tuple(b.shape) for b in batches]
    results = state["results"].setdefault("0", {})
    t_calib = t_merge = 0.0
    for i in track(range(sm.n_layers), "gqa: streaming layers", enabled=progress):
        t1 = time.perf_counter()
        sm.load_layer(i, device)
        block = blocks(sm.model, arch)[i]
        timing["read_s"] += time.perf_counter() - t1
        if i < state["next"]:  # written by the run this one continues: only its outputs are needed
            _through(block, i, hidden, shapes, calls, device)
            sm.unload_layer(i)
            continue
        t1 = time.perf_counter()
        unit = cfg.grouping == "similarity" and cfg.grouping_metric == "cosine"
        stats = LayerStats.empty(
            D, device, sink=cfg.sink_tokens, weights=read_attention(sm.model, arch, i) if unit else None
        )
        hook = get_module(block, arch.k if arch.qkv == "separate" else arch.fused).register_forward_pre_hook(
            lambda _m, args: stats.add(args[0])
        )
        try:
            _through(block, i, hidden, shapes, calls, device)
        finally:
            hook.remove()
        t2 = time.perf_counter()
        w = read_attention(sm.model, arch, i)
        plan = plan_layer(
            w,
            stats,
            cfg.kv_heads,
            layer_key_planes(planes_k, w, arch),
            grouping=cfg.grouping,
            align=cfg.align,
            seed=seed,
            restarts=cfg.restarts,
            iters=cfg.procrustes_iters,
            metric=cfg.grouping_metric,
            on=cfg.grouping_on,
        )
        write_attention(sm.model, arch, i, plan.merged)
        results[str(i)] = {"layer": i, **plan.record}
        t3 = time.perf_counter()
        t_calib, t_merge = t_calib + t2 - t1, t_merge + t3 - t2
        timing["compute_s"] += t3 - t1
        for key, t in sm.layer_state(i).items():
            writer.write(key, t)
        sm.unload_layer(i)
        timing["write_s"] += time.perf_counter() - t3
        mark(i + 1)
    records = [results[str(i)] for i in range(sm.n_layers)]
    summary = {
        **conversion_summary(records, (H, Hkv, d), cfg.kv_heads, tokens, t_calib, t_merge),
        "seconds": time.perf_counter() - t0,
        "hidden_states_on": str(store),
    }
    return {"layers": records, "summary": summary}
