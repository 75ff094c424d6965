"""Architecture knowledge as data: where attention and FFN weights live in each model family.

Adding an architecture means adding one `ArchSpec` to `SPECS` (and a tiny-model test in
tests/test_archs.py); no algorithm branches on `model_type`.

Paths are dotted attribute paths relative to `model.base_model` (for the layer list) and
relative to one layer (for everything else).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from tensorllm.errors import UserError

QKVLayout = Literal["separate", "fused_concat", "fused_per_head"]
RopePairing = Literal["half", "interleaved"]


@dataclass(frozen=True)
class ArchSpec:
    name: str
    model_types: tuple[str, ...]
    layers: str  # ModuleList of blocks, relative to model.base_model
    o: str  # output projection, relative to a block
    qkv: QKVLayout = "separate"
    q: str | None = None  # separate projections (qkv == "separate")
    k: str | None = None
    v: str | None = None
    fused: str | None = None  # fused projection (qkv != "separate")
    conv1d: bool = False  # weights stored (in, out) as in GPT-2's Conv1D
    ffn_in: tuple[str, ...] = ()  # FFN input matrices (gate, up / fc_in)
    ffn_out: str | None = None  # FFN output matrix (down / fc_out)
    rope: RopePairing | None = None  # how RoPE pairs dimensions of a head
    kv_heads_key: str | None = None  # config key for the K/V head count (GQA-capable families)
    kv_groups_attr: str | None = None  # attention-module attribute holding H / Hkv
    is_decoder: bool = True

    @property
    def supports_gqa(self) -> bool:
        return self.qkv == "separate" and self.kv_heads_key is not None

    def matrix_paths(self) -> dict[str, str]:
        """Named matrices a user can address (e.g. for LASER), relative to a block."""
        named: dict[str, str] = {"o": self.o}
        if self.qkv == "separate":
            named.update(q=self.q, k=self.k, v=self.v)
        else:
            named["qkv"] = self.fused
        if self.ffn_in:
            named["ffn_in"] = self.ffn_in[-1]  # the "up" / fc_in matrix
            if len(self.ffn_in) > 1:
                named["ffn_gate"] = self.ffn_in[0]
        if self.ffn_out:
            named["ffn_out"] = self.ffn_out
        return named


_LLAMA_LIKE = dict(
    layers="layers", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj", rope="half",
    kv_heads_key="num_key_value_heads", kv_groups_attr="num_key_value_groups",
)
_BERT_LIKE = dict(
    layers="encoder.layer", q="attention.self.query", k="attention.self.key", v="attention.self.value",
    o="attention.output.dense", ffn_in=("intermediate.dense",), ffn_out="output.dense", is_decoder=False,
)

SPECS: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), **_LLAMA_LIKE),
    ArchSpec("mistral", ("mistral",), **_LLAMA_LIKE),
    ArchSpec("qwen2", ("qwen2",), **_LLAMA_LIKE),  # q/k/v carry biases; handled generically
    ArchSpec("gemma", ("gemma",), **_LLAMA_LIKE),  # head_dim (256 in Gemma-2B) != hidden / heads
    ArchSpec("phi3", ("phi3",), layers="layers", qkv="fused_concat", fused="self_attn.qkv_proj",
             o="self_attn.o_proj", ffn_in=("mlp.gate_up_proj",), ffn_out="mlp.down_proj", rope="half"),
    ArchSpec("gpt2", ("gpt2",), layers="h", qkv="fused_concat", fused="attn.c_attn", o="attn.c_proj",
             conv1d=True, ffn_in=("mlp.c_fc",), ffn_out="mlp.c_proj"),
    ArchSpec("gptj", ("gptj",), layers="h", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj",
             o="attn.out_proj", ffn_in=("mlp.fc_in",), ffn_out="mlp.fc_out", rope="interleaved"),
    ArchSpec("gpt_neox", ("gpt_neox",), layers="layers", qkv="fused_per_head",
             fused="attention.query_key_value", o="attention.dense",
             ffn_in=("mlp.dense_h_to_4h",), ffn_out="mlp.dense_4h_to_h", rope="half"),
    ArchSpec("bert", ("bert",), **_BERT_LIKE),
    ArchSpec("roberta", ("roberta", "xlm-roberta"), **_BERT_LIKE),
)


def supported() -> list[str]:
    return sorted({t for s in SPECS for t in s.model_types})


def spec_for(config) -> ArchSpec:
    model_type = getattr(config, "model_type", None)
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    raise UserError(f"unsupported architecture '{model_type}' (supported: {', '.join(supported())})")


def get_module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def blocks(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    return get_module(model.base_model, spec.layers)


def head_layout(config) -> tuple[int, int, int, int]:
    """(hidden D, query heads H, K/V heads Hkv, head_dim d) from any supported config."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return hidden, heads, kv, head_dim


def rotary_dims(config, head_dim: int) -> int:
    """How many leading dimensions of each head RoPE rotates (0 for models without RoPE)."""
    if getattr(config, "rotary_dim", None):  # GPT-J
        return int(config.rotary_dim)
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "partial_rotary_factor" in params:
        return int(head_dim * params["partial_rotary_factor"])
    factor = getattr(config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", None)
    return int(head_dim * factor) if factor else head_dim
