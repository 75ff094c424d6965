"""The registered `gqa` method: text -> calibration (and fine-tune) tokens -> `convert` (convert.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tensorllm.archs import ArchSpec
from tensorllm.methods import registry
from tensorllm.methods.gqa.calibrate import calibration_documents, chunk, token_stream
from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.methods.gqa.convert import check_convertible, convert
from tensorllm.methods.registry import Flag, Method, RunContext

NAME = "gqa"


@dataclass
class Text:
    """The method's share of the text stream, in order: calibration, then the fine-tune's tokens."""

    ids: torch.Tensor  # (N,) the whole token stream of cfg.calib_file or the default text
    calib: torch.Tensor  # (n_seq, seq_len) tokens [0, C)
    train: torch.Tensor | None  # (m_seq, seq_len) tokens [C, C + T) when cfg.train_tokens, else None

    @property
    def used(self) -> int:
        """Tokens the method reads: held-out text for measuring it starts here."""
        return self.calib.numel() + (0 if self.train is None else self.train.numel())


def text_tokens(tokenizer, cfg: GQAConfig) -> Text:
    """Tokenise cfg.calib_file (or the default text) and cut the calibration and fine-tune tokens."""
    ids = token_stream(tokenizer, calibration_documents(cfg.calib_file))
    calib = chunk(ids, cfg.calib_tokens, cfg.seq_len)
    train = None
    if cfg.train_steps and cfg.train_tokens:
        train = chunk(ids, cfg.train_tokens, cfg.seq_len, offset=calib.numel(), what="fine-tune text")
    return Text(ids, calib, train)


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
    return convert_on_text(model, arch, cfg, ctx, text_tokens(ctx.tokenizer, cfg))


def convert_on_text(
    model: nn.Module, arch: ArchSpec, cfg: GQAConfig, ctx: RunContext, text: Text, monitor=None
) -> dict:
    """`apply_gqa` on text already tokenised (`tensorllm gqa` also cuts its held-out tokens from it and
    watches the fine-tune's held-out perplexity with `monitor`)."""
    seed = ctx.seed if cfg.seed is None else cfg.seed
    return convert(
        model,
        arch,
        cfg,
        text.calib,
        train=text.train,
        device=ctx.device,
        seed=seed,
        progress=ctx.progress,
        monitor=monitor,
    )


class GQA(Method):
    """Changes the K/V head count (the shapes), so the search cannot apply and restore it; `tensorllm gqa`
    is its command (tensorllm.cli.gqa) and `compress --recipe` runs it as a step."""

    name, config_cls = NAME, GQAConfig
    compress_flags = (  # also the options of `tensorllm gqa` (cli/gqa.py)
        Flag(
            "grouping-metric",
            "gqa: how heads are scored for the grouping: energy (default) | cosine (per token) | distance.",
            key="grouping_metric",
        ),
        Flag("grouping-on", "gqa: score the heads' keys | values | both (default).", key="grouping_on"),
        Flag(
            "sink-tokens",
            "gqa: leave the first N tokens of each calibration sequence out of the grouping (default 0).",
            type=int,
            key="sink_tokens",
        ),
        Flag(
            "l0-schedule",
            "gqa: fine-tune gates: ceiling (default: forced closed by the warm-up's end) | lagrangian "
            "(free until the end).",
            key="l0_schedule",
        ),
    )

    def apply(self, model, arch, cfg: GQAConfig, ctx: RunContext) -> dict:
        return apply_gqa(model, arch, cfg, ctx)

    def describe(self, step: dict) -> str:
        return f"gqa {step.get('kv_heads')} K/V heads"


registry.register(GQA())
