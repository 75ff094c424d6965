"""MHA -> GQA alignment with q/k norms after the projection (Qwen3, Gemma-3, OLMo-2, Phi's qk_layernorm).

A key rotation is folded into the projection weights, so it acts before the norm: it keeps the model
only where it commutes with the norm's scale (align.py's docstring derives it). These tests give the
norms weights that are equal on some RoPE planes and different on the others, so that the
restriction matters: with it the permuted and aligned weights give the same logits (float64 model;
the families' norms compute in float32 inside, so agreement is ~1e-7, asserted < 1e-5); without it
(the unrestricted RoPE planes) they differ by > 1e-3. Converting a model whose K/V heads
were expanded back to its own head count reproduces it, with the norm weights of a standard checkpoint.
"""

from __future__ import annotations

import pytest
import torch

import tensorllm
from tensorllm.archs import blocks, get_module, spec_for, text_config
from tensorllm.attention import read_attention, write_attention
from tensorllm.methods.gqa import align as A
from tensorllm.methods.gqa.calibrate import input_grams
from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.methods.gqa.convert import convert, key_planes, layer_key_planes, plan_layer
from tensorllm.methods.gqa.heads import permute_kv_heads, transform_heads
from tensorllm.models.expand_kv import expand_kv

IDS = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(0))
FAMILIES = ["qwen3", "gemma3_text", "olmo2"]  # per-head RMS, per-head (1 + w), whole-projection RMS


def _tie_some_planes(model, arch) -> None:
    """Query norm weights equal on RoPE planes 0 .. d/4-1, key norm weights on planes d/8 .. 3d/8-1, different
    elsewhere: only planes d/8 .. d/4-1 may rotate (the others only I or -I), so the restriction has
    something to decide on both sides."""
    d = read_attention(model, arch, 0).head_dim
    for block in blocks(model, arch):
        for path, first in ((arch.q_norm, 0), (arch.k_norm, d // 8)):
            with torch.no_grad():
                rows = get_module(block, path).weight.view(-1, d)  # (1 or heads, d)
                for i in range(first, first + d // 4):  # planes (i, i + d/2), pairing "half"
                    rows[:, i + d // 2] = rows[:, i]


def _model(tiny, family: str, **overrides):
    model = tiny.model(family, **overrides).double()
    arch = spec_for(model.config)
    _tie_some_planes(model, arch)
    return model, arch


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _align_every_layer(model, arch, planes_for) -> float:
    """Write each layer's permuted + aligned (unmerged) plan; return how far the keys moved."""
    grams = input_grams(model, arch, IDS, progress=False)
    moved = []
    for i in range(len(grams)):
        w = read_attention(model, arch, i)
        # merge=False: OLMo-2's key norm has no merge (the conversion refuses it); the alignment is exact
        plan = plan_layer(w, grams[i], w.kv_heads // 2, planes_for(w), grouping="contiguous", merge=False)
        moved.append(float((plan.aligned.k - w.k).norm() / w.k.norm()))
        write_attention(model, arch, i, plan.aligned)
    return min(moved)


# ------------------------------------------------------------------ the restriction itself


def test_restrict_keeps_planes_with_equal_scales_and_flips_the_others():
    planes = A.Planes.for_rope(8, 6, "half")  # planes (0,3) (1,4) (2,5); dims 6, 7 free
    scales = torch.tensor(
        [[1.0, 2.0, 3.0, 1.0, 5.0, 3.0, 7.0, 7.0], [4.0, 4.0, 2.0, 4.0, 4.0, 2.0, 1.0, 2.0]]
    )
    r = planes.restrict(scales)
    assert r.pairs.tolist() == [[0, 3], [2, 5]]  # equal in both rows
    assert r.flips.tolist() == [[1, 4]]
    assert sorted(b.tolist() for b in r.blocks()) == [[6], [7]]  # 6 and 7 differ in the second row
    assert r.restrict(None) is r
    everything_fixed = planes.restrict(scales, centred=True)
    assert everything_fixed.fixed.tolist() == list(range(8)) and not everything_fixed.pairs.numel()


@pytest.mark.parametrize("centred", [False, True])
def test_every_restricted_transform_commutes_with_every_scale_and_is_optimal(centred):
    gen = torch.Generator().manual_seed(4)
    d = 12
    planes = A.Planes.for_rope(d, 8, "half")
    scales = torch.rand(3, d, generator=gen, dtype=torch.float64)
    scales[:, 4] = scales[:, 0]  # plane (0, 4) may rotate
    scales[:, 9] = scales[:, 8]  # free dims 8, 9 form one block
    r = planes.restrict(scales, centred=centred)
    M = torch.randn(50, d, d, generator=gen, dtype=torch.float64)
    T = A.best_transform(M, r)  # (50, d, d)
    eye = torch.eye(d, dtype=torch.float64)
    assert torch.allclose(T @ T.transpose(1, 2), eye.expand_as(T), atol=1e-12)  # orthogonal
    for s in scales:
        assert torch.allclose(T * s[None, :], s[:, None] * T, atol=1e-12)  # T diag(s) == diag(s) T
    # optimal over the allowed group: no random allowed transform does better, and the score is attained
    score = A.best_score(M, r)
    assert torch.allclose(score, torch.einsum("nab,nba->n", T, M), atol=1e-9)
    others = A.best_transform(torch.randn(50, d, d, generator=gen, dtype=torch.float64), r)
    assert bool((torch.einsum("nab,nba->n", others, M) <= score + 1e-9).all())
    if not centred:
        assert r.pairs.tolist() == [[0, 4]] and [9] not in [b.tolist() for b in r.blocks()]


# ------------------------------------------------------------------ logits before the merge


@pytest.mark.parametrize("family", FAMILIES)
def test_alignment_within_the_norm_restriction_keeps_the_logits(tiny, family):
    """Permuted + aligned weights of every layer (merge not applied): same logits."""
    model, arch = _model(tiny, family, num_key_value_heads=4)
    ref = _logits(model)
    planes = key_planes(model, arch, read_attention(model, arch, 0).head_dim)
    w = read_attention(model, arch, 0)
    d = w.head_dim
    assert layer_key_planes(planes, w, arch).pairs[:, 0].tolist() == list(range(d // 8, d // 4))
    moved = _align_every_layer(model, arch, lambda w: layer_key_planes(planes, w, arch))
    assert moved > 0.05  # the alignment did move the keys
    assert _rel(_logits(model), ref) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_without_the_restriction_the_same_alignment_changes_the_model(tiny, family):
    """Negative control: RoPE's planes alone rotate planes whose norm weights differ."""
    model, arch = _model(tiny, family, num_key_value_heads=4)
    ref = _logits(model)
    planes = key_planes(model, arch, read_attention(model, arch, 0).head_dim)
    _align_every_layer(model, arch, lambda w: planes)
    assert _rel(_logits(model), ref) > 1e-3


def test_layernorm_on_queries_and_keys_leaves_keys_unrotated(tiny):
    """Phi with qk_layernorm: LayerNorm subtracts the mean, so no key rotation is exact; values still move."""
    model = tiny.model("phi", num_key_value_heads=4, qk_layernorm=True).double()
    arch = spec_for(model.config)
    ref = _logits(model)
    planes = key_planes(model, arch, read_attention(model, arch, 0).head_dim)
    w = read_attention(model, arch, 0)
    assert w.qn is not None and layer_key_planes(planes, w, arch).fixed.numel() == w.head_dim
    grams = input_grams(model, arch, IDS, progress=False)
    for i in range(len(grams)):
        w = read_attention(model, arch, i)
        plan = plan_layer(w, grams[i], 2, layer_key_planes(planes, w, arch), grouping="contiguous")
        order = [h for g in plan.groups for h in g]
        assert torch.equal(plan.aligned.k, permute_kv_heads(w, order).k)  # keys only permuted
        write_attention(model, arch, i, plan.aligned)
    assert _rel(_logits(model), ref) < 1e-10


# ------------------------------------------------------------------ conversion, merged weights


def _hide(model, arch, seed: int = 0) -> None:
    """A function-preserving disguise: random allowed key/value transforms and a head permutation."""
    gen = torch.Generator().manual_seed(seed)
    base = key_planes(model, arch, read_attention(model, arch, 0).head_dim)
    for i in range(len(blocks(model, arch))):
        w = read_attention(model, arch, i)
        d = w.head_dim
        tk = A.best_transform(
            torch.randn(w.kv_heads, d, d, generator=gen, dtype=torch.float64), layer_key_planes(base, w, arch)
        )
        tv = A.best_transform(
            torch.randn(w.kv_heads, d, d, generator=gen, dtype=torch.float64), A.Planes.orthogonal(d)
        )
        order = torch.randperm(w.kv_heads, generator=gen).tolist()
        write_attention(model, arch, i, permute_kv_heads(transform_heads(w, tk, tv), order))


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text", "gemma3"])
def test_expand_disguise_and_convert_back_gives_the_model_with_standard_norm_weights(tiny, family, tmp_path):
    model, arch = _model(tiny, family)
    config = text_config(model.config)
    kv = config.num_key_value_heads
    ref = _logits(model)
    norms = {n: p.detach().clone() for n, p in model.named_parameters() if "q_norm" in n or "k_norm" in n}
    expand_kv(model, arch)
    _hide(model, arch)
    assert _rel(_logits(model), ref) < 1e-5  # still the same model (the norms compute in float32)
    convert(model, arch, GQAConfig(kv_heads=kv, grouping="similarity", align=True), IDS, progress=False)
    assert config.num_key_value_heads == kv
    assert _rel(_logits(model), ref) < 1e-5  # the alignment found the disguise, the merge is exact
    after = dict(model.named_parameters())
    for name, value in norms.items():  # one (head_dim,) weight, as the original checkpoint
        assert after[name].shape == value.shape and torch.equal(after[name].detach(), value), name
    model.save_pretrained(tmp_path)
    reloaded = tiny.auto_class(family).from_pretrained(tmp_path, dtype=torch.float64).eval()
    fresh = tiny.model(family)
    shapes = {k: v.shape for k, v in reloaded.state_dict().items()}
    assert shapes == {k: v.shape for k, v in fresh.state_dict().items()}  # a standard checkpoint's tensors
    assert _rel(_logits(reloaded), ref) < 1e-5


def test_a_norm_over_the_whole_key_projection_refuses_the_conversion_in_one_line(tiny):
    model, arch = _model(tiny, "olmo2", num_key_value_heads=4)
    for cfg in (GQAConfig(kv_heads=2), GQAConfig(kv_heads=2, align=False)):
        with pytest.raises(tensorllm.UserError) as exc:
            convert(model, arch, cfg, IDS, progress=False)
        message = str(exc.value)
        assert "\n" not in message and "olmo2" in message and "whole K projection" in message


def test_the_gqa_command_on_olmo2_refuses_naming_the_feature_and_writes_nothing(tiny, tmp_path):
    import typer
    from typer.testing import CliRunner

    from tensorllm.cli import gqa as cli_gqa

    app = typer.Typer()
    cli_gqa.register(app)
    app.command("other")(lambda: None)  # a second command keeps `gqa` a named subcommand
    ckpt = tiny.save(tmp_path / "olmo2", "olmo2", num_key_value_heads=4)
    out = tmp_path / "out"
    args = ["gqa", str(ckpt), "--kv-heads", "2", "--out", str(out), "--calib-tokens", "64", "--seq-len", "32"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, tensorllm.UserError)  # the CLI prints it as one `error:` line, exit 2
    assert "\n" not in str(result.exception) and "whole K projection" in str(result.exception)
    assert not out.exists()


def test_a_multimodal_gemma3_fine_tunes_and_reports_its_kv_cache(tiny):
    """The multimodal Gemma-3 config holds its sizes in `text_config`: the recovery fine-tune and the
    KV-cache size read the language model's head layout, not the outer config."""
    from tensorllm.eval.measure import kv_cache_bytes_per_token

    model, arch = _model(tiny, "gemma3")
    config = text_config(model.config)
    kv, d = config.num_key_value_heads, config.head_dim
    expand_kv(model, arch)
    heads = config.num_attention_heads
    assert kv_cache_bytes_per_token(model) == 2 * config.num_hidden_layers * heads * d * 8  # float64
    cfg = GQAConfig(kv_heads=kv, train_steps=2, train_tokens=0, seq_len=16, train_precision="float32")
    convert(model, arch, cfg, IDS, progress=False)
    assert config.num_key_value_heads == kv
    assert kv_cache_bytes_per_token(model) == 2 * config.num_hidden_layers * kv * d * 8
