"""Architecture knowledge as data: where attention and FFN weights live in each model family.

Adding an architecture means adding one `ArchSpec` (its fields: tensorllm/arch_spec.py) to `SPECS`
(and a tiny-model case in tests/test_archs.py); no algorithm branches on `model_type`. A family whose
checkpoints differ by a config flag (Falcon's three qkv layouts) has one entry per variant, chosen by
`when`.

Paths are dotted attribute paths relative to `model.base_model` (for the layer list) and
relative to one layer (for everything else). Multimodal checkpoints (Gemma-3) are described by
their language model: sizes come from `text_config(config)`.
"""

from __future__ import annotations

from torch import nn

from tensorllm.arch_spec import ArchSpec
from tensorllm.base.errors import UserError

__all__ = ["SPECS", "ArchSpec", "blocks", "head_layout", "spec_for"]  # ArchSpec: re-exported

_LLAMA_LIKE = dict(
    layers="layers",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    ffn=(("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"), ("down", "mlp.down_proj")),
    rope="half",
    kv_heads_key="num_key_value_heads",
    kv_groups_attr="num_key_value_groups",
)
_QK_PER_HEAD = dict(q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", qk_norm_span="head")
# transformers >= 5 stores experts fused: gate_up_proj (E, 2I, D) = [gate; up] per expert, down_proj (E, D, I)
_MOE = dict(
    ffn=(),
    experts="mlp.experts",
    router="mlp.gate",
    expert_matrices=(
        ("gate", "gate_up_proj", 0, 2),
        ("up", "gate_up_proj", 1, 2),
        ("down", "down_proj", 0, 1),
    ),
)
_BERT_LIKE = dict(
    layers="encoder.layer",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    ffn=(("fc_in", "intermediate.dense"), ("fc_out", "output.dense")),
    is_decoder=False,
)
_FALCON = dict(
    layers="h",
    fused="self_attention.query_key_value",
    o="self_attention.dense",
    rope="half",
    ffn=(("fc_in", "mlp.dense_h_to_4h"), ("fc_out", "mlp.dense_4h_to_h")),
)

SPECS: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), **_LLAMA_LIKE),
    ArchSpec("mistral", ("mistral",), **_LLAMA_LIKE),
    ArchSpec("qwen2", ("qwen2",), **_LLAMA_LIKE),  # q/k/v carry biases; handled generically
    ArchSpec("gemma", ("gemma",), **_LLAMA_LIKE),  # head_dim (256 in Gemma-2B) != hidden / heads
    ArchSpec("gemma2", ("gemma2",), **_LLAMA_LIKE),  # soft-capping, sliding windows: in the model's forward
    ArchSpec("gemma3_text", ("gemma3_text",), **_LLAMA_LIKE, **_QK_PER_HEAD, norm_offset=1.0),
    ArchSpec(
        "gemma3",
        ("gemma3",),
        **{**_LLAMA_LIKE, "layers": "language_model.layers"},
        **_QK_PER_HEAD,
        norm_offset=1.0,
    ),  # the language model of the multimodal checkpoint
    ArchSpec("qwen3", ("qwen3",), **_LLAMA_LIKE, **_QK_PER_HEAD),
    ArchSpec("qwen3_moe", ("qwen3_moe",), **{**_LLAMA_LIKE, **_MOE}, **_QK_PER_HEAD),
    ArchSpec("mixtral", ("mixtral",), **{**_LLAMA_LIKE, **_MOE}),
    ArchSpec(
        "olmo2",
        ("olmo2",),
        **_LLAMA_LIKE,
        q_norm="self_attn.q_norm",
        k_norm="self_attn.k_norm",
        qk_norm_span="projection",
    ),
    ArchSpec("granite", ("granite",), **_LLAMA_LIKE),  # multipliers live in the config
    ArchSpec(
        "starcoder2",
        ("starcoder2",),
        **{**_LLAMA_LIKE, "ffn": (("fc_in", "mlp.c_fc"), ("fc_out", "mlp.c_proj"))},
    ),  # biases
    ArchSpec(
        "phi",
        ("phi",),
        **{**_LLAMA_LIKE, "o": "self_attn.dense", "ffn": (("fc_in", "mlp.fc1"), ("fc_out", "mlp.fc2"))},
        q_norm="self_attn.q_layernorm",
        k_norm="self_attn.k_layernorm",
        qk_norm_span="head",
        qk_norm_kind="layer",
    ),  # phi-2: partial RoPE, biases; LayerNorms on q/k only with qk_layernorm
    ArchSpec(
        "phi3",
        ("phi3",),
        layers="layers",
        qkv="fused_concat",
        fused="self_attn.qkv_proj",
        o="self_attn.o_proj",
        ffn=(("gate_up", "mlp.gate_up_proj"), ("down", "mlp.down_proj")),
        rope="half",
    ),
    # Falcon: per K/V group [its query heads; K; V] (new decoder architecture, Falcon-40B/180B),
    # [Q; K; V] with one K/V head (multi-query, Falcon-7B), or per head [q; k; v] (Falcon-RW).
    ArchSpec(
        "falcon",
        ("falcon",),
        qkv="fused_grouped",
        kv_heads_key="num_kv_heads",
        **_FALCON,
        when=(("new_decoder_architecture", True), ("alibi", False)),
    ),
    ArchSpec(
        "falcon-mq",
        ("falcon",),
        qkv="fused_concat",
        kv_heads=1,
        **_FALCON,
        when=(("new_decoder_architecture", False), ("multi_query", True), ("alibi", False)),
    ),
    ArchSpec(
        "falcon-mha",
        ("falcon",),
        qkv="fused_per_head",
        **_FALCON,
        when=(("new_decoder_architecture", False), ("multi_query", False), ("alibi", False)),
    ),
    ArchSpec(
        "gpt2",
        ("gpt2",),
        layers="h",
        qkv="fused_concat",
        fused="attn.c_attn",
        o="attn.c_proj",
        conv1d=True,
        ffn=(("fc_in", "mlp.c_fc"), ("fc_out", "mlp.c_proj")),
    ),
    ArchSpec(
        "gptj",
        ("gptj",),
        layers="h",
        q="attn.q_proj",
        k="attn.k_proj",
        v="attn.v_proj",
        o="attn.out_proj",
        ffn=(("fc_in", "mlp.fc_in"), ("fc_out", "mlp.fc_out")),
        rope="interleaved",
    ),
    ArchSpec(
        "gpt_neox",
        ("gpt_neox",),
        layers="layers",
        qkv="fused_per_head",
        fused="attention.query_key_value",
        o="attention.dense",
        ffn=(("fc_in", "mlp.dense_h_to_4h"), ("fc_out", "mlp.dense_4h_to_h")),
        rope="half",
    ),
    ArchSpec("bert", ("bert",), **_BERT_LIKE),
    ArchSpec("roberta", ("roberta", "xlm-roberta"), **_BERT_LIKE),
)

# What a `when` key means, for the one-line refusal of a supported family with an unsupported feature.
FEATURES = {
    "alibi": "ALiBi position biases",
    "new_decoder_architecture": "the decoder architecture",
    "multi_query": "multi-query attention",
}


def supported() -> list[str]:
    return sorted({t for s in SPECS for t in s.model_types})


def text_config(config):
    """The language model's config (itself, except for multimodal checkpoints such as Gemma-3)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _matches(spec: ArchSpec, config) -> bool:
    return all(getattr(config, key, None) == value for key, value in spec.when)


def spec_for(config) -> ArchSpec:
    model_type = getattr(config, "model_type", None)
    family = [s for s in SPECS if model_type in s.model_types]
    if not family:
        raise UserError(f"unsupported architecture '{model_type}' (supported: {', '.join(supported())})")
    for spec in family:
        if _matches(spec, config):
            return spec
    keys = sorted({k for s in family for k, _ in s.when})
    # the flags whose value no variant accepts are the unsupported features
    bad = [
        k
        for k in keys
        if all(dict(s.when).get(k, getattr(config, k, None)) != getattr(config, k, None) for s in family)
    ] or keys
    found = ", ".join(f"{FEATURES.get(k, k)} ({k}={getattr(config, k, None)})" for k in bad)
    raise UserError(
        f"{model_type} checkpoint with an unsupported feature: {found}; supported variants: "
        f"{'; '.join(_when_text(s) for s in family)}"
    )


def _when_text(spec: ArchSpec) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.when)


def get_module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def find_module(root: nn.Module, path: str | None) -> nn.Module | None:
    """`get_module`, or None where the path (or a part of it) is absent or None."""
    if path is None:
        return None
    try:
        return get_module(root, path)
    except AttributeError:
        return None


def blocks(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    return get_module(model.base_model, spec.layers)


def head_layout(config) -> tuple[int, int, int, int]:
    """(hidden D, query heads H, K/V heads Hkv, head_dim d) from any supported config."""
    model_type = getattr(config, "model_type", None)
    spec = next((s for s in SPECS if model_type in s.model_types and _matches(s, config)), None)
    config = text_config(config)
    hidden = config.hidden_size
    heads = config.num_attention_heads
    if spec is not None and spec.kv_heads is not None:
        kv = spec.kv_heads
    else:
        key = spec.kv_heads_key if spec is not None and spec.kv_heads_key else "num_key_value_heads"
        kv = getattr(config, key, None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return hidden, heads, kv, head_dim


def rotary_dims(config, head_dim: int) -> int:
    """How many leading dimensions of each head RoPE rotates (0 for models without RoPE)."""
    config = text_config(config)
    if getattr(config, "rotary_dim", None):  # GPT-J
        return int(config.rotary_dim)
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "partial_rotary_factor" in params:
        return int(head_dim * params["partial_rotary_factor"])
    factor = getattr(config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", None)
    return int(head_dim * factor) if factor else head_dim
