"""Tiny configs of the 2025-2026 families (issue 14), merged into conftest's table of tiny models.

Each entry: case name -> (config factory, Auto class holding the LM head). The case name is the
model_type, or the ArchSpec name where one model_type has several entries (Falcon's three qkv
layouts). A transformers without a family's config class skips that family's tests, saying so.
"""

from __future__ import annotations

import pytest
import transformers

HIDDEN, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 4, 2, 2, 128
SIZES = dict(
    vocab_size=VOCAB,
    num_hidden_layers=LAYERS,
    hidden_size=HIDDEN,
    num_attention_heads=HEADS,
    intermediate_size=2 * HIDDEN,
)
TOKENS = dict(bos_token_id=2, eos_token_id=2, pad_token_id=1)
GQA = dict(num_key_value_heads=KV_HEADS)
# Gemma-3 as Gemma-3-270M: multi-query (one K/V head), head_dim 32 != hidden / heads, a sliding-window
# layer (window 4, shorter than the tests' prompts) and a global one, q/k norms with (1 + w) weights.
GEMMA3 = dict(
    num_key_value_heads=1, head_dim=32, sliding_window=4, layer_types=["sliding_attention", "full_attention"]
)
MOE = dict(num_experts_per_tok=2)
FALCON = dict(
    vocab_size=VOCAB,
    num_hidden_layers=LAYERS,
    hidden_size=HIDDEN,
    num_attention_heads=HEADS,
    bos_token_id=2,
    eos_token_id=2,
)
GRANITE = dict(
    embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=4.0
)
CAUSAL = "AutoModelForCausalLM"


def config_class(name: str):
    cls = getattr(transformers, name, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} cannot build this model: it has no {name}")
    return cls


def _config(cls_name: str, *parts: dict):
    defaults = {k: v for part in parts for k, v in part.items()}
    return lambda **kw: config_class(cls_name)(**{**defaults, **kw})


def _gemma3_multimodal(**kw):
    """Gemma-3's multimodal checkpoint: a one-layer SigLIP tower around the tiny Gemma-3 text model."""
    text = config_class("Gemma3TextConfig")(**{**SIZES, **TOKENS, **GEMMA3, **kw})
    vision = config_class("SiglipVisionConfig")(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    # the image tokens' ids lie outside the ids the tests draw (3 .. VOCAB-1)
    return config_class("Gemma3Config")(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=0,
        boi_token_index=0,
        eoi_token_index=0,
    )


TINY = {
    # Qwen3: per-head RMS norms of q and k after the projection (one (d,) weight each).
    "qwen3": (_config("Qwen3Config", SIZES, GQA, TOKENS, dict(head_dim=16)), CAUSAL),
    # Qwen3-MoE: 4 experts (top 2) stored fused, q/k norms.
    "qwen3_moe": (
        _config(
            "Qwen3MoeConfig",
            SIZES,
            GQA,
            TOKENS,
            MOE,
            dict(head_dim=16, num_experts=4, moe_intermediate_size=32),
        ),
        CAUSAL,
    ),
    "mixtral": (_config("MixtralConfig", SIZES, GQA, TOKENS, MOE, dict(num_local_experts=4)), CAUSAL),
    # Gemma-2: attention and final soft-capping, query_pre_attn_scalar, a window of 4 on every other layer.
    "gemma2": (
        _config(
            "Gemma2Config", SIZES, GQA, TOKENS, dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=24)
        ),
        CAUSAL,
    ),
    "gemma3_text": (_config("Gemma3TextConfig", SIZES, TOKENS, GEMMA3), CAUSAL),
    "gemma3": (_gemma3_multimodal, "AutoModelForImageTextToText"),
    # OLMo-2: RMS norms over the whole q / k projection.
    "olmo2": (_config("Olmo2Config", SIZES, GQA, TOKENS), CAUSAL),
    # Granite: embedding / attention / residual multipliers and a logits scale in the config.
    "granite": (_config("GraniteConfig", SIZES, GQA, TOKENS, GRANITE), CAUSAL),
    "starcoder2": (_config("Starcoder2Config", SIZES, GQA, TOKENS), CAUSAL),
    # phi-2: biases, RoPE on half of each head (GQA here, to exercise expand-kv).
    "phi": (_config("PhiConfig", SIZES, GQA, TOKENS, dict(partial_rotary_factor=0.5)), CAUSAL),
    # Falcon's three qkv layouts: grouped (new decoder architecture), multi-query, per head.
    "falcon": (
        _config(
            "FalconConfig", FALCON, dict(new_decoder_architecture=True, num_kv_heads=KV_HEADS, bias=True)
        ),
        CAUSAL,
    ),
    "falcon-mq": (_config("FalconConfig", FALCON, dict(multi_query=True)), CAUSAL),
    "falcon-mha": (_config("FalconConfig", FALCON, dict(multi_query=False, bias=True)), CAUSAL),
}
