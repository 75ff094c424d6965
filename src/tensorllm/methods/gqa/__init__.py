"""MHA -> GQA conversion with aligned heads (arXiv 2412.20677): calibrate, group, align, merge, fine-tune.

    align.py      pure math: RoPE-commuting rotations, Procrustes, pair similarity, group alignment
    grouping.py   pure math: equal-size grouping by swap search with restarts
    metrics.py    pure math: the grouping's pair scores (energy, per-token cosine, distance)
    heads.py      function-preserving edits of AttnWeights: permute, rotate, merge
    calibrate.py  calibration text -> tokens -> streamed K/V-input statistics (forward hooks)
    convert.py    per-layer plan and the whole-model conversion
    finetune.py   gated distillation fine-tune, exported as plain GQA
    method.py     the registered `gqa` method

Measuring (perplexity, KV-cache bytes, decode speed) lives in `tensorllm.eval.measure`, the fast
decode attention in `tensorllm.models.decode_attention`, the `tensorllm gqa` pipeline in
`tensorllm.cli.gqa_pipeline`.
"""

from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.methods.gqa.convert import LayerPlan, check_convertible, convert, plan_layer
from tensorllm.methods.gqa.method import Text, apply_gqa, text_tokens

__all__ = [
    "GQAConfig",
    "LayerPlan",
    "Text",
    "apply_gqa",
    "check_convertible",
    "convert",
    "plan_layer",
    "text_tokens",
]
