"""Every ArchSpec in tensorllm.archs.SPECS, on a tiny random model of its family.

For each case (a model_type, or an ArchSpec name where a family has several entries): the canonical
attention read (q/k norm weights included) agrees with an independent reading of the raw parameters,
read -> write is bit-exact, writes land where an independent reader finds them, full-rank Tucker is
the identity, low-rank Tucker touches only the chosen layer's attention weights, and the result
reloads with plain transformers. Also: expand_kv on GQA families, and unknown architectures (or a
known family with a feature no entry describes) are refused in one line.
"""

from __future__ import annotations

import pytest
import torch

import tensorllm
from tensorllm.archs import SPECS, spec_for, supported, text_config
from tensorllm.attention import read_attention, write_attention
from tensorllm.models.expand_kv import expand_kv

# One case per model_type, plus the other entries of a family with several (Falcon's layouts).
MODEL_TYPES = list(
    dict.fromkeys(
        [t for s in SPECS for t in s.model_types] + [s.name for s in SPECS if s.name not in s.model_types]
    )
)


def _case_spec(case: str):
    return (
        next(s for s in SPECS if s.name == case)
        if any(s.name == case for s in SPECS)
        else next(s for s in SPECS if case in s.model_types)
    )


GQA_TYPES = [t for t in MODEL_TYPES if _case_spec(t).supports_gqa]
NON_GQA_TYPES = [t for t in MODEL_TYPES if t not in GQA_TYPES]

# (query heads, K/V heads, head_dim) of each tiny model (see conftest, tiny_archs): the expected layout.
LAYOUT = {t: (4, 4, 16) for t in MODEL_TYPES}
LAYOUT.update(
    {
        t: (4, 2, 16)
        for t in (
            "llama",
            "mistral",
            "qwen2",
            "phi3",
            "qwen3",
            "qwen3_moe",
            "mixtral",
            "gemma2",
            "olmo2",
            "granite",
            "starcoder2",
            "phi",
            "falcon",
        )
    }
)
LAYOUT.update({"gemma": (4, 2, 32), "gemma3_text": (4, 1, 32), "gemma3": (4, 1, 32), "falcon-mq": (4, 1, 16)})
D = 64


def _recipe(**step) -> dict:
    return {"device": "cpu", "steps": [{"method": "tucker", **step}]}


# ------------------------------------------------------------- independent raw readers
# Each reads a layer's attention from the state dict by parameter name, following the layout the
# Hugging Face modelling code uses, and returns canonical nn.Linear (out, in) matrices.


def _separate(prefix: str, q: str, k: str, v: str, o: str):
    def read(sd, layer, H, Hkv, d):
        p = prefix.format(layer=layer)
        return {
            "q": sd[f"{p}{q}.weight"],
            "k": sd[f"{p}{k}.weight"],
            "v": sd[f"{p}{v}.weight"],
            "o": sd[f"{p}{o}.weight"],
            "bq": sd.get(f"{p}{q}.bias"),
            "bk": sd.get(f"{p}{k}.bias"),
            "bv": sd.get(f"{p}{v}.bias"),
            "bo": sd.get(f"{p}{o}.bias"),
        }

    return read


def _phi3(sd, layer, H, Hkv, d):
    p = f"model.layers.{layer}.self_attn."
    w = sd[p + "qkv_proj.weight"]  # rows: [Q (H*d); K (Hkv*d); V (Hkv*d)]
    return {
        "q": w[: H * d],
        "k": w[H * d : (H + Hkv) * d],
        "v": w[(H + Hkv) * d :],
        "o": sd[p + "o_proj.weight"],
        "bq": None,
        "bk": None,
        "bv": None,
        "bo": sd.get(p + "o_proj.bias"),
    }


def _gpt2(sd, layer, H, Hkv, d):
    p = f"transformer.h.{layer}.attn."
    w, b = sd[p + "c_attn.weight"], sd[p + "c_attn.bias"]  # Conv1D: (in D, out 3D), y = x @ w + b
    return {
        "q": w[:, :D].T,
        "k": w[:, D : 2 * D].T,
        "v": w[:, 2 * D :].T,
        "o": sd[p + "c_proj.weight"].T,
        "bq": b[:D],
        "bk": b[D : 2 * D],
        "bv": b[2 * D :],
        "bo": sd[p + "c_proj.bias"],
    }


def _gpt_neox(sd, layer, H, Hkv, d):
    p = f"gpt_neox.layers.{layer}.attention."
    w = sd[p + "query_key_value.weight"].view(H, 3, d, D)  # per head: q, k, v rows
    b = sd[p + "query_key_value.bias"].view(H, 3, d)
    return {
        "q": w[:, 0].reshape(H * d, D),
        "k": w[:, 1].reshape(H * d, D),
        "v": w[:, 2].reshape(H * d, D),
        "o": sd[p + "dense.weight"],
        "bq": b[:, 0].reshape(-1),
        "bk": b[:, 1].reshape(-1),
        "bv": b[:, 2].reshape(-1),
        "bo": sd[p + "dense.bias"],
    }


def _falcon(layout: str):
    def read(sd, layer, H, Hkv, d):
        p = f"transformer.h.{layer}.self_attention."
        w, b = sd[p + "query_key_value.weight"], sd.get(p + "query_key_value.bias")

        def cut(t):
            rest = t.shape[1:]
            if layout == "grouped":  # per K/V group: its H/Hkv query heads, then K, then V
                g = t.view(Hkv, H // Hkv + 2, d, *rest)
                q, k, v = g[:, :-2], g[:, -2], g[:, -1]
                return q.reshape(H * d, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)
            if layout == "mq":  # [Q (H*d); K (d); V (d)]
                return t[: H * d], t[H * d : (H + 1) * d], t[(H + 1) * d :]
            g = t.view(H, 3, d, *rest)  # per head: q, k, v
            return g[:, 0].reshape(H * d, *rest), g[:, 1].reshape(H * d, *rest), g[:, 2].reshape(H * d, *rest)

        (q, k, v), (bq, bk, bv) = cut(w), (cut(b) if b is not None else (None, None, None))
        return {
            "q": q,
            "k": k,
            "v": v,
            "o": sd[p + "dense.weight"],
            "bq": bq,
            "bk": bk,
            "bv": bv,
            "bo": sd.get(p + "dense.bias"),
        }

    return read


_LLAMA = _separate("model.layers.{layer}.self_attn.", "q_proj", "k_proj", "v_proj", "o_proj")
_BERT = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
RAW = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gptj": _separate("transformer.h.{layer}.attn.", "q_proj", "k_proj", "v_proj", "out_proj"),
    "gpt_neox": _gpt_neox,
    "bert": _separate("bert.encoder.layer.{layer}.", *_BERT),
    "roberta": _separate("roberta.encoder.layer.{layer}.", *_BERT),
    "xlm-roberta": _separate("roberta.encoder.layer.{layer}.", *_BERT),
    **{
        t: _LLAMA
        for t in ("qwen3", "qwen3_moe", "mixtral", "gemma2", "gemma3_text", "olmo2", "granite", "starcoder2")
    },
    "gemma3": _separate(
        "model.language_model.layers.{layer}.self_attn.", "q_proj", "k_proj", "v_proj", "o_proj"
    ),
    "phi": _separate("model.layers.{layer}.self_attn.", "q_proj", "k_proj", "v_proj", "dense"),
    "falcon": _falcon("grouped"),
    "falcon-mq": _falcon("mq"),
    "falcon-mha": _falcon("per_head"),
}
# q/k norm weights after the projection: state-dict key prefix of a layer's attention, and how the checkpoint
# stores them ("head": one (d,) weight for every head; "projection": (H*d,) / (Hkv*d,)).
NORMS = {
    "qwen3": ("model.layers.{layer}.self_attn.", "head"),
    "qwen3_moe": ("model.layers.{layer}.self_attn.", "head"),
    "gemma3_text": ("model.layers.{layer}.self_attn.", "head"),
    "gemma3": ("model.language_model.layers.{layer}.self_attn.", "head"),
    "olmo2": ("model.layers.{layer}.self_attn.", "projection"),
}


class _Recorder(dict):
    """A state dict that remembers which keys a raw reader touched."""

    def __init__(self, *a):
        super().__init__(*a)
        self.touched: set[str] = set()

    def __getitem__(self, key):
        self.touched.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self.touched.add(key)
        return super().get(key, default)


def raw_read(model, model_type: str, layer: int) -> tuple[dict, set[str]]:
    H, Hkv, d = LAYOUT[model_type]
    sd = _Recorder({k: v.detach().clone() for k, v in model.state_dict().items()})
    return RAW[model_type](sd, layer, H, Hkv, d), sd.touched


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------- table coverage


def test_every_spec_has_a_tiny_model_and_a_raw_reader(tiny):
    assert set(MODEL_TYPES) == set(tiny.model_types) == set(RAW)
    assert set(supported()) <= set(MODEL_TYPES)
    assert {s.name for s in SPECS} >= {
        "llama",
        "mistral",
        "qwen2",
        "gemma",
        "phi3",
        "gpt2",
        "gptj",
        "gpt_neox",
        "bert",
        "roberta",
        "qwen3",
        "qwen3_moe",
        "gemma2",
        "gemma3_text",
        "gemma3",
        "olmo2",
        "mixtral",
        "starcoder2",
        "falcon",
        "granite",
        "phi",
    }
    assert set(GQA_TYPES) == {
        "llama",
        "mistral",
        "qwen2",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gemma3",
        "qwen3",
        "qwen3_moe",
        "mixtral",
        "olmo2",
        "granite",
        "starcoder2",
        "phi",
    }


def test_every_entry_is_reached_by_its_tiny_model(tiny):
    """Each case's config selects the entry of that name (Falcon's variants by their config flags)."""
    reached = {}
    for case in MODEL_TYPES:
        spec = spec_for(tiny.config(case))
        reached[spec.name] = case
        assert case in (spec.name, *spec.model_types)
    assert set(reached) == {s.name for s in SPECS}


# ------------------------------------------------------------- (a) reading


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_read_attention_matches_raw_parameters(tiny, model_type):
    model = tiny.model(model_type)
    spec = spec_for(model.config)
    assert model_type in (spec.name, *spec.model_types)
    H, Hkv, d = LAYOUT[model_type]
    for layer in range(2):
        w = read_attention(model, spec, layer)
        assert (w.heads, w.kv_heads, w.head_dim, w.hidden, w.group) == (H, Hkv, d, D, H // Hkv)
        assert w.q.shape == (H * d, D) and w.o.shape == (D, H * d)
        assert w.k.shape == w.v.shape == (Hkv * d, D)
        raw, _ = raw_read(model, model_type, layer)
        for name in ("q", "k", "v", "o", "bq", "bk", "bv", "bo"):
            got, want = getattr(w, name), raw[name]
            if want is None:
                assert got is None, f"{model_type}: {name} should be absent"
            else:
                assert got is not None and got.shape == want.shape, f"{model_type}: {name}"
                assert torch.equal(got, want), f"{model_type} layer {layer}: {name} differs from the raw one"
        for name, size in (("bq", H * d), ("bk", Hkv * d), ("bv", Hkv * d), ("bo", D)):
            if getattr(w, name) is not None:
                assert getattr(w, name).shape == (size,)


def test_biases_present_where_the_family_has_them(tiny):
    has_qkv_bias = {
        t for t in MODEL_TYPES if read_attention(tiny.model(t), spec_for(tiny.config(t)), 0).bq is not None
    }
    assert has_qkv_bias == {
        "qwen2",
        "gpt2",
        "gpt_neox",
        "bert",
        "roberta",
        "xlm-roberta",
        "starcoder2",
        "phi",
        "falcon",
        "falcon-mha",
    }


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_qk_norm_weights_are_read_per_head_from_where_the_checkpoint_keeps_them(tiny, model_type):
    model = tiny.model(model_type)
    spec = spec_for(model.config)
    H, Hkv, d = LAYOUT[model_type]
    w = read_attention(model, spec, 1)
    if model_type not in NORMS:
        assert w.qn is None and w.kn is None and spec.qk_norm_span in (None, "head")
        return
    prefix, span = NORMS[model_type]
    assert spec.qk_norm_span == span
    sd = model.state_dict()
    for name, heads, got in (("q_norm", H, w.qn), ("k_norm", Hkv, w.kn)):
        raw = sd[prefix.format(layer=1) + name + ".weight"]
        assert raw.shape == ((d,) if span == "head" else (heads * d,))
        want = raw.repeat(heads) if span == "head" else raw  # one copy per head, like a bias
        assert got.shape == (heads * d,) and torch.equal(got, want)


@pytest.mark.parametrize("model_type", [t for t in NORMS if NORMS[t][1] == "head"])
def test_a_shared_per_head_norm_refuses_heads_with_different_weights(tiny, model_type):
    """A standard checkpoint holds one (d,) weight for all heads: per-head copies that differ are an error."""
    model = tiny.model(model_type)
    spec = spec_for(model.config)
    w = read_attention(model, spec, 0)
    kn = w.kn.clone()
    kn[-1] += 1.0
    if w.kv_heads == 1:  # one K/V head: differing copies can only come from the queries
        w = w.with_(qn=torch.cat([w.qn[:-1], w.qn[-1:] + 1.0]))
    else:
        w = w.with_(kn=kn)
    with pytest.raises(ValueError, match="one .* weight for every head"):
        write_attention(model, spec, 0, w)


# ------------------------------------------------------------- (b) writing


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_write_of_read_is_bit_identical(tiny, model_type):
    model = tiny.model(model_type)
    spec = spec_for(model.config)
    before = snapshot(model)
    for layer in range(2):
        write_attention(model, spec, layer, read_attention(model, spec, layer))
    after = snapshot(model)
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_write_lands_where_the_raw_layout_puts_it(tiny, model_type):
    """Distinct edits of q, k, v, o and biases are found by the raw reader, and nothing else moves."""
    model = tiny.model(model_type)
    spec = spec_for(model.config)
    before = snapshot(model)
    w = read_attention(model, spec, 1)
    edits = {"q": w.q + 1.0, "k": w.k * 2.0, "v": w.v - 0.5, "o": w.o * 3.0}
    edits.update(
        {
            b: getattr(w, b) + 0.25 * (i + 1)
            for i, b in enumerate(("bq", "bk", "bv", "bo"))
            if getattr(w, b) is not None
        }
    )
    write_attention(model, spec, 1, w.with_(**edits))
    raw, touched = raw_read(model, model_type, 1)
    for name, want in edits.items():
        assert torch.equal(raw[name], want), f"{model_type}: {name} written to the wrong place"
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= touched, f"{model_type}: unexpected writes to {changed - touched}"


# ------------------------------------------------------------- (c, d) Tucker through the API


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_full_rank_tucker_on_all_layers_keeps_the_logits(tiny, model_type):
    model = tiny.model(model_type)
    ids = tiny.inputs()
    ref = tiny.logits(model, ids)
    _, report = tensorllm.compress(model, _recipe(layers="all", ranks=[1.0, 1.0, 1.0]), progress=False)
    H, Hkv, d = LAYOUT[model_type]
    records = report.steps[0]["layers"]
    assert [r["layer"] for r in records] == [0, 1]
    for r in records:
        assert r["tensor_shape"] == [D, d, 2 * (H // Hkv) + 2, Hkv]
        assert r["ranks"] == [D, d, 2 * (H // Hkv) + 2]
        assert r["rel_error"] < 1e-6
    delta = (tiny.logits(model, ids) - ref).abs().max().item()
    assert delta < 1e-5, f"{model_type}: full-rank Tucker moved the logits by {delta:.2e}"


def _unfold_ranks(w, tol: float = 1e-4) -> tuple[int, int]:
    """Numerical ranks of the d_model-mode and head-dim-mode unfoldings of a layer's attention."""
    d, D_ = w.head_dim, w.hidden
    model_mode = torch.cat([w.q.T, w.k.T, w.v.T, w.o], dim=1).double()  # (D, all block columns)
    blocks = [
        w.q.reshape(-1, d, D_),
        w.k.reshape(-1, d, D_),
        w.v.reshape(-1, d, D_),
        w.o.T.reshape(-1, d, D_),
    ]  # each (n, d, D): block^T of every head
    head_mode = torch.cat([b.permute(1, 0, 2).reshape(d, -1) for b in blocks], dim=1).double()  # (d, ...)
    ranks = []
    for m in (model_mode, head_mode):
        s = torch.linalg.svdvals(m)
        ranks.append(int((s > tol * s[0]).sum()))
    return ranks[0], ranks[1]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_low_rank_tucker_edits_only_that_layers_attention_weights(tiny, model_type, tmp_path):
    model = tiny.model(model_type)
    spec = spec_for(model.config)
    ids = tiny.inputs()
    before = snapshot(model)
    _, touched = raw_read(model, model_type, 1)  # every raw key of layer 1's attention
    assert _unfold_ranks(read_attention(model, spec, 1)) == (D, LAYOUT[model_type][2])  # full before

    # n_iter_max keeps this quick: what is checked holds after any number of HOOI sweeps
    _, report = tensorllm.compress(model, _recipe(layers=[1], ranks=[8, 4, 2], n_iter_max=5), progress=False)
    rec = report.steps[0]["layers"][0]
    assert rec["layer"] == 1 and rec["ranks"] == [8, 4, 2] and 0 < rec["rel_error"] < 1
    after = snapshot(model)
    attn_weights = {k for k in touched if k.endswith("weight")}
    for k in before:
        if k in attn_weights:
            assert not torch.equal(before[k], after[k]), f"{model_type}: {k} should have changed"
        else:  # biases, the other layer, embeddings, norms, FFN
            assert torch.equal(before[k], after[k]), f"{model_type}: {k} changed"
    w = read_attention(model, spec, 1)
    for name in ("q", "k", "v", "o"):
        assert not torch.allclose(getattr(w, name), raw_read(tiny.model(model_type), model_type, 1)[0][name])
    assert _unfold_ranks(w) == (8, 4)  # the rebuilt weights live in the shared subspaces

    # (d) a plain save_pretrained reloads with the plain Auto class and gives identical logits
    logits = tiny.logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = tiny.auto_class(model_type).from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    assert torch.equal(tiny.logits(reloaded, ids), logits)
    assert snapshot(reloaded).keys() == after.keys()


# ------------------------------------------------------------- (e) unknown architectures


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_unknown_architecture_is_refused_with_the_supported_list(family):
    import transformers

    if family == "opt":
        config = transformers.OPTConfig(
            hidden_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            ffn_dim=128,
            vocab_size=128,
            max_position_embeddings=64,
            word_embed_proj_dim=64,
        )
        model = transformers.OPTForCausalLM(config)
    else:
        config = transformers.T5Config(
            d_model=64, d_kv=16, num_heads=4, num_layers=2, d_ff=128, vocab_size=128
        )
        model = transformers.T5ForConditionalGeneration(config)
    with pytest.raises(tensorllm.UserError) as exc:
        tensorllm.compress(model, _recipe(layers=[0], ranks=[8, 4, 2]), progress=False)
    message = str(exc.value)
    assert f"'{family}'" in message and "\n" not in message
    for name in supported():
        assert name in message


def test_a_known_family_with_a_feature_no_entry_describes_is_refused_naming_it(tiny):
    """Falcon with ALiBi positions: one line naming the feature, before anything is computed."""
    model = tiny.model("falcon-mha", alibi=True)
    with pytest.raises(tensorllm.UserError) as exc:
        tensorllm.compress(model, _recipe(layers=[0], ranks=[8, 4, 2]), progress=False)
    message = str(exc.value)
    assert "\n" not in message and "ALiBi" in message and "alibi=True" in message and "falcon" in message


# ------------------------------------------------------------- expand_kv


@pytest.mark.parametrize("model_type", GQA_TYPES)
def test_expand_kv_repeats_heads_and_keeps_the_function(tiny, model_type, tmp_path):
    model = tiny.model(model_type)
    spec = spec_for(model.config)
    H, Hkv, d = LAYOUT[model_type]
    g = H // Hkv
    ids = tiny.inputs()
    ref = tiny.logits(model, ids)
    old = [raw_read(model, model_type, layer)[0] for layer in range(2)]

    assert expand_kv(model, spec) == Hkv
    assert getattr(text_config(model.config), spec.kv_heads_key) == H
    delta = (tiny.logits(model, ids) - ref).abs().max().item()
    assert delta < 1e-5, f"{model_type}: expand_kv moved the logits by {delta:.2e}"
    for layer in range(2):
        new = raw_read(model, model_type, layer)[0]
        assert new["k"].shape == new["v"].shape == (H * d, D)
        assert torch.equal(new["q"], old[layer]["q"]) and torch.equal(new["o"], old[layer]["o"])
        for i in range(H):  # query head i read K/V head i // g; now it has its own copy
            rows, src = slice(i * d, (i + 1) * d), slice((i // g) * d, (i // g + 1) * d)
            for name in ("k", "v", "bk", "bv"):
                if old[layer][name] is not None:
                    assert torch.equal(new[name][rows], old[layer][name][src]), f"{name} of head {i}"

    model.save_pretrained(tmp_path)
    reloaded = tiny.auto_class(model_type).from_pretrained(tmp_path).eval()
    assert text_config(reloaded.config).num_key_value_heads == H
    assert torch.equal(tiny.logits(reloaded, ids), tiny.logits(model, ids))
    # the state dict is exactly what a fresh multi-head model of the family holds (norm weights included)
    fresh = tiny.model(model_type, num_key_value_heads=H)
    shapes = {k: v.shape for k, v in snapshot(reloaded).items()}
    assert shapes == {k: v.shape for k, v in snapshot(fresh).items()}


@pytest.mark.parametrize("model_type", NON_GQA_TYPES)
def test_expand_kv_refuses_families_without_separate_kv_heads(tiny, model_type):
    model = tiny.model(model_type)
    with pytest.raises(tensorllm.UserError):
        expand_kv(model, spec_for(model.config))


def test_expand_kv_refuses_a_model_that_is_already_multi_head(tiny):
    model = tiny.model("llama", num_key_value_heads=None)
    assert model.config.num_key_value_heads == 4
    with pytest.raises(tensorllm.UserError, match="already multi-head"):
        expand_kv(model, spec_for(model.config))
