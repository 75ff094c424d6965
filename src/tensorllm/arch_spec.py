"""The record describing one architecture family (`ArchSpec`): where its weights live, its head layout,
RoPE pairing, q/k norms and experts, and the matrix names a user can address. The table of families
and the lookups over it are in `tensorllm/archs.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

QKVLayout = Literal["separate", "fused_concat", "fused_per_head", "fused_grouped"]
RopePairing = Literal["half", "interleaved"]
QKNormSpan = Literal["head", "projection"]
QKNormKind = Literal["rms", "layer"]


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
    ffn: tuple[tuple[str, str], ...] = ()  # the FFN's matrices by own name: gate/up/down or fc_in/fc_out
    rope: RopePairing | None = None  # how RoPE pairs dimensions of a head
    kv_heads_key: str | None = None  # config key for the K/V head count (GQA-capable families)
    kv_groups_attr: str | None = None  # attention-module attribute holding H / Hkv
    kv_heads: int | None = None  # a K/V head count the layout fixes (Falcon-7B's multi-query: 1)
    is_decoder: bool = True
    # Norms of queries and keys after the projection, before RoPE (Qwen3, Gemma-3, OLMo-2, Phi's
    # qk_layernorm). span "head": one weight (d,) shared by every head, statistics over each head;
    # "projection": one weight over the whole projection (H*d,) / (Hkv*d,), statistics over it all.
    q_norm: str | None = None  # module paths; an absent module (Phi without qk_layernorm): no norm
    k_norm: str | None = None
    qk_norm_span: QKNormSpan | None = None
    qk_norm_kind: QKNormKind = "rms"  # "layer": LayerNorm (subtracts the mean)
    norm_offset: float = 0.0  # the norm scales by (norm_offset + weight): Gemma's (1 + w)
    # Mixture of experts: every expert's matrices as (E, out, in) parameters of one module.
    experts: str | None = None  # the experts module, relative to a block
    expert_matrices: tuple[tuple[str, str, int, int], ...] = ()  # (own name, parameter, part, parts): rows
    router: str | None = None  # the router (never rank-reduced), relative to a block
    when: tuple[tuple[str, object], ...] = ()  # config values this entry requires (variants of one family)

    @property
    def supports_gqa(self) -> bool:
        return self.qkv == "separate" and self.kv_heads_key is not None

    @property
    def is_moe(self) -> bool:
        return self.experts is not None

    def matrix_paths(self) -> dict[str, str]:
        """The matrices a user can address by name (LASER, Tucker `single`), relative to a block:
        q, k, v (or the fused qkv), o, the FFN's own names (gate, up, down / fc_in, fc_out) and, for MoE,
        experts.gate / experts.up / experts.down (parameter paths; `expert_matrix` says which rows)."""
        separate = self.qkv == "separate"
        named: dict[str, str] = {"q": self.q, "k": self.k, "v": self.v} if separate else {"qkv": self.fused}
        named["o"] = self.o
        named.update(self.ffn)
        named.update({f"experts.{n}": f"{self.experts}.{p}" for n, p, _, _ in self.expert_matrices})
        return named

    def matrix_aliases(self) -> dict[str, str]:
        """Other names -> own names. LASER's names mean what they mean in LASER's code (`fc_in` of a gated
        FFN is its gate, `fc_up` its up, `fc_out` its down; `out_proj` is o); tensorllm's earlier names
        `ffn_in` (the FFN input that is not the gate), `ffn_gate` and `ffn_out` keep their meaning. In a
        MoE family the FFN names mean the experts' matrices."""
        moe = not self.ffn and bool(self.expert_matrices)
        own = {n: n for n, _ in self.ffn}
        if moe:
            own = {n: f"experts.{n}" for n, _, _, _ in self.expert_matrices}
        aliases = {"out_proj": "o"}
        if self.qkv == "separate":
            aliases.update(q_proj="q", k_proj="k", v_proj="v")
        if "gate" in own:
            aliases.update(
                fc_in=own["gate"],
                fc_up=own["up"],
                fc_out=own["down"],
                ffn_gate=own["gate"],
                ffn_in=own["up"],
                ffn_out=own["down"],
            )
        elif "gate_up" in own:
            aliases.update(fc_out="down", ffn_in="gate_up", ffn_out="down")
        elif "fc_in" in own:
            aliases.update(ffn_in="fc_in", ffn_out="fc_out")
        if moe:  # gate / up / down of a MoE family are the experts' (the router is never a matrix to reduce)
            aliases.update(own)
        return aliases

    @property
    def ffn_input(self) -> str | None:
        """The FFN input matrix that is not a gate (up / fc_in / gate_up / experts.up): LASER's default."""
        own = [*dict(self.ffn), *(f"experts.{n}" for n, _, _, _ in self.expert_matrices)]
        return next((n for n in ("up", "fc_in", "gate_up", "experts.up") if n in own), None)

    def expert_matrix(self, name: str) -> tuple[str, int, int] | None:
        """For an expert matrix's own name: (parameter path, part, parts); otherwise None."""
        for n, param, part, parts in self.expert_matrices:
            if name == f"experts.{n}":
                return f"{self.experts}.{param}", part, parts
        return None

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
