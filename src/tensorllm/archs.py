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

from tensorllm.base.errors import UserError

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
    ffn: tuple[tuple[str, str], ...] = ()  # the FFN's matrices by their own names: gate/up/down or fc_in/fc_out
    rope: RopePairing | None = None  # how RoPE pairs dimensions of a head
    kv_heads_key: str | None = None  # config key for the K/V head count (GQA-capable families)
    kv_groups_attr: str | None = None  # attention-module attribute holding H / Hkv
    is_decoder: bool = True

    @property
    def supports_gqa(self) -> bool:
        return self.qkv == "separate" and self.kv_heads_key is not None

    def matrix_paths(self) -> dict[str, str]:
        """The matrices a user can address by name (LASER, Tucker `single`), relative to a block:
        q, k, v (or the fused qkv), o, and the FFN's own names (gate, up, down / fc_in, fc_out)."""
        named: dict[str, str] = {"q": self.q, "k": self.k, "v": self.v} if self.qkv == "separate" else {"qkv": self.fused}
        named["o"] = self.o
        named.update(self.ffn)
        return named

    def matrix_aliases(self) -> dict[str, str]:
        """Other names -> own names. LASER's names mean what they mean in LASER's code (`fc_in` of a gated
        FFN is its gate, `fc_up` its up, `fc_out` its down; `out_proj` is o); tensorllm's earlier names
        `ffn_in` (the FFN input that is not the gate), `ffn_gate` and `ffn_out` keep their meaning."""
        own = dict(self.ffn)
        aliases = {"out_proj": "o"}
        if self.qkv == "separate":
            aliases.update(q_proj="q", k_proj="k", v_proj="v")
        if "gate" in own:
            aliases.update(fc_in="gate", fc_up="up", fc_out="down", ffn_gate="gate", ffn_in="up", ffn_out="down")
        elif "gate_up" in own:
            aliases.update(fc_out="down", ffn_in="gate_up", ffn_out="down")
        elif "fc_in" in own:
            aliases.update(ffn_in="fc_in", ffn_out="fc_out")
        return aliases

    @property
    def ffn_input(self) -> str | None:
        """The FFN input matrix that is not a gate (up / fc_in / gate_up): LASER's default here."""
        own = dict(self.ffn)
        return next((n for n in ("up", "fc_in", "gate_up") if n in own), None)

    def resolve_matrix(self, name: str) -> tuple[str, str]:
        """A matrix name, alias or module path -> (its own name, or the path itself; the module path)."""
        named = self.matrix_paths()
        name = self.matrix_aliases().get(name, name)
        if name in named:
            return name, named[name]
        for own, path in named.items():
            if path == name:
                return own, path
        return name, name  # a module path the table does not name; checked where it is used


_LLAMA_LIKE = dict(
    layers="layers", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    ffn=(("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"), ("down", "mlp.down_proj")), rope="half",
    kv_heads_key="num_key_value_heads", kv_groups_attr="num_key_value_groups",
)
_BERT_LIKE = dict(
    layers="encoder.layer", q="attention.self.query", k="attention.self.key", v="attention.self.value",
    o="attention.output.dense", ffn=(("fc_in", "intermediate.dense"), ("fc_out", "output.dense")),
    is_decoder=False,
)

SPECS: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), **_LLAMA_LIKE),
    ArchSpec("mistral", ("mistral",), **_LLAMA_LIKE),
    ArchSpec("qwen2", ("qwen2",), **_LLAMA_LIKE),  # q/k/v carry biases; handled generically
    ArchSpec("gemma", ("gemma",), **_LLAMA_LIKE),  # head_dim (256 in Gemma-2B) != hidden / heads
    ArchSpec("phi3", ("phi3",), layers="layers", qkv="fused_concat", fused="self_attn.qkv_proj",
             o="self_attn.o_proj", ffn=(("gate_up", "mlp.gate_up_proj"), ("down", "mlp.down_proj")), rope="half"),
    ArchSpec("gpt2", ("gpt2",), layers="h", qkv="fused_concat", fused="attn.c_attn", o="attn.c_proj",
             conv1d=True, ffn=(("fc_in", "mlp.c_fc"), ("fc_out", "mlp.c_proj"))),
    ArchSpec("gptj", ("gptj",), layers="h", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj",
             o="attn.out_proj", ffn=(("fc_in", "mlp.fc_in"), ("fc_out", "mlp.fc_out")), rope="interleaved"),
    ArchSpec("gpt_neox", ("gpt_neox",), layers="layers", qkv="fused_per_head",
             fused="attention.query_key_value", o="attention.dense",
             ffn=(("fc_in", "mlp.dense_h_to_4h"), ("fc_out", "mlp.dense_4h_to_h")), rope="half"),
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
