"""The registered `gqa` method: calibration text -> tokens -> `convert` (convert.py)."""

from __future__ import annotations

from torch import nn

from tensorllm.archs import ArchSpec
from tensorllm.methods.gqa.calibrate import calibration_documents, chunk, token_stream
from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.methods.gqa.convert import check_convertible, convert
from tensorllm.methods.registry import RunContext, register


def calibration_tokens(tokenizer, cfg: GQAConfig):
    """(calibration tokens (n_seq, seq_len), the whole token stream) from cfg.calib_file or the default text."""
    ids = token_stream(tokenizer, calibration_documents(cfg.calib_file))
    return chunk(ids, cfg.calib_tokens, cfg.seq_len), ids


@register("gqa", GQAConfig)
def apply_gqa(model: nn.Module, arch: ArchSpec, cfg: GQAConfig, ctx: RunContext) -> dict:
    """MHA -> GQA with aligned heads (Jin et al., arXiv 2412.20677).

    Streams each layer's K/V input second moment over calibration text, groups the K/V heads
    into `kv_heads` equal groups by their similarity after a RoPE-safe alignment, folds the
    alignment and a head permutation into Q/K/V/O (function unchanged), then replaces each
    group's K/V by their mean; optionally recovers with a gated distillation fine-tune.
    The result is a standard checkpoint with `num_key_value_heads = kv_heads`.

        steps:
          - method: gqa
            kv_heads: 8
            grouping: similarity
            align: true
            calib_tokens: 262144
            seq_len: 2048
    """
    check_convertible(model, arch, cfg)  # before spending time on the text
    tokens, _ = calibration_tokens(ctx.tokenizer, cfg)
    seed = ctx.seed if cfg.seed is None else cfg.seed
    return convert(model, arch, cfg, tokens, device=ctx.device, seed=seed, progress=ctx.progress)
