"""Grouping metrics (energy, per-token cosine, distance), keys / values / both, sink tokens: each score
against a brute-force computation on per-token activations; the options in configs and conversions."""

import math

import pytest
import torch
from gqa_models import hide_structure, logits, rel_diff, tiny_llama
from scipy.linalg import orthogonal_procrustes

from tensorllm.archs import spec_for
from tensorllm.attention import read_attention, write_attention
from tensorllm.base.errors import UserError
from tensorllm.methods import registry
from tensorllm.methods.gqa import align as A
from tensorllm.methods.gqa import metrics as M
from tensorllm.methods.gqa.calibrate import LayerStats, calibration_stats, cross_products
from tensorllm.methods.gqa.convert import _to64, convert, grouping_scores, key_planes
from tensorllm.models.expand_kv import expand_kv

IDS = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
CALIB = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))


def _activations(model, ids, layer):
    """Pre-RoPE keys and values of one layer, token by token: two (B, T, n, d) tensors."""
    attn = model.model.layers[layer].self_attn
    d, seen = model.config.head_dim, {}
    hooks = [
        getattr(attn, name).register_forward_hook(lambda _m, _a, out, name=name: seen.__setitem__(name, out))
        for name in ("k_proj", "v_proj")
    ]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return [seen[n].unflatten(-1, (-1, d)).double() for n in ("k_proj", "v_proj")]


def _best_values(X, Y):
    """The orthogonal T maximising sum_t <x_t, T y_t> (rows of X, Y: (N, d)), by scipy's Procrustes."""
    R, _ = orthogonal_procrustes(Y.numpy(), X.numpy())  # argmin ||Y R - X||: y R = (R^T y)^T
    return torch.from_numpy(R).T


def _best_keys(X, Y, pairs, grid=20000):
    """One rotation per RoPE plane (a, b), the best of `grid` angles, applied to the vectors themselves."""
    d = X.shape[1]
    T = torch.zeros(d, d, dtype=torch.float64)
    theta = torch.arange(grid, dtype=torch.float64) * (2 * math.pi / grid)  # (K,)
    c, s = theta.cos()[:, None], theta.sin()[:, None]  # (K, 1)
    for a, b in pairs.tolist():
        ra, rb = c * Y[:, a] - s * Y[:, b], s * Y[:, a] + c * Y[:, b]  # (K, N): R(theta) y
        k = int((X[:, a] * ra + X[:, b] * rb).sum(-1).argmax())
        T[a, a], T[a, b], T[b, a], T[b, b] = c[k, 0], -s[k, 0], s[k, 0], c[k, 0]
    return T


def _brute(metric, acts, i, j, best):
    """Score of heads i, j from per-token activations acts (N, n, d), aligning j onto i with `best`."""
    X, Y = acts[:, i], acts[:, j]  # (N, d)
    if metric == "cosine":
        X, Y = X / X.norm(dim=-1, keepdim=True), Y / Y.norm(dim=-1, keepdim=True)
    TY = Y @ best(X, Y).T  # (N, d): T y_t
    if metric == "cosine":
        return float((X * TY).sum(-1).mean())
    if metric == "energy":
        return float((X * TY).sum() / (X.square().sum() * Y.square().sum()).sqrt())
    return -float((X - TY).square().sum(-1).mean().sqrt())


def _scores(model, ids, layer, sink, metric, on):
    arch = spec_for(model.config)
    stats = calibration_stats(model, arch, ids, batch_size=2, progress=False, sink_tokens=sink, unit=True)
    w = _to64(read_attention(model, arch, layer), torch.device("cpu"))
    n, d = w.kv_heads, w.head_dim
    blocks = tuple(
        A.cross_blocks(cross_products(W, b, stats[layer].gram), n, d) for W, b in ((w.k, w.bk), (w.v, w.bv))
    )
    planes = (key_planes(model, arch, d), A.Planes.orthogonal(d))
    return grouping_scores(w, stats[layer], blocks, planes, metric, on), planes


@pytest.mark.parametrize("metric", M.METRICS)
@pytest.mark.parametrize("on", ["keys", "values", "both"])
def test_each_metric_equals_a_brute_force_computation(metric, on):
    """qwen2 (K/V biases), 3 sequences in batches of 2, the first 3 tokens of each left out."""
    model = tiny_llama(4, 4, family="qwen2")
    sink, layer = 3, 1
    S, (planes_k, _) = _scores(model, IDS, layer, sink, metric, on)
    keys, values = (a[:, sink:].flatten(0, 1) for a in _activations(model, IDS, layer))  # (N, n, d)
    best_k = lambda X, Y: _best_keys(X, Y, planes_k.pairs)  # noqa: E731
    n = keys.shape[1]
    for i in range(n):
        for j in range(n):
            want = 0.0
            if i != j and on in ("keys", "both"):
                want += _brute(metric, keys, i, j, best_k)
            if i != j and on in ("values", "both"):
                want += _brute(metric, values, i, j, _best_values)
            assert float(S[i, j]) == pytest.approx(want, rel=1e-6, abs=1e-9), (i, j)


def test_the_sink_tokens_change_the_scores_and_only_the_grouping_statistics():
    model = tiny_llama(4, 4)
    for metric in M.METRICS:
        with_sinks = _scores(model, IDS, 0, 4, metric, "both")[0]
        without = _scores(model, IDS, 0, 0, metric, "both")[0]
        assert (with_sinks - without).abs().max() > 1e-3
    a = calibration_stats(model, spec_for(model.config), IDS, progress=False, sink_tokens=4)[0]
    b = calibration_stats(model, spec_for(model.config), IDS, progress=False)[0]
    assert torch.equal(a.gram, b.gram)  # alignment and merge still read every token
    assert a.grouping_tokens == IDS.shape[0] * (IDS.shape[1] - 4) and b.body is None


def test_sink_tokens_are_left_out_of_the_sums():
    """Whatever the first tokens hold, the grouping's sums are those of the tokens after them."""
    w = read_attention(tiny_llama(4, 4), spec_for(tiny_llama(4, 4).config), 0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 10, 64, generator=gen, dtype=torch.float64)
    garbage = x.clone()
    garbage[:, :3] = 1e3 * torch.randn(2, 3, 64, generator=gen, dtype=torch.float64)
    sums = []
    for batch, sink in ((x, 3), (garbage, 3), (x[:, 3:], 0)):
        stats = LayerStats.empty(64, "cpu", sink=sink, weights=w)
        stats.add(batch)
        sums.append((stats.grouping_gram, stats.unit_k, stats.unit_v))
    for got in sums[:2]:
        for g, want in zip(got, sums[2]):
            torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)


def test_unit_cross_products_of_a_multi_head_view_repeat_the_own_heads():
    gen = torch.Generator().manual_seed(3)
    acts = torch.randn(50, 2 * 4, generator=gen, dtype=torch.float64)  # 2 own heads of d = 4
    repeated = acts.unflatten(-1, (2, 1, 4)).expand(50, 2, 3, 4).reshape(50, 24)  # each head 3 times
    want = A.cross_blocks(M.unit_cross_products(repeated, 6, 4), 6, 4)
    got = M.expand_unit_blocks(M.unit_cross_products(acts, 2, 4), 6, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def _planted():
    """Layer 0: key heads 0~2, 1~3 and value heads 0~1, 2~3 are near copies of each other."""
    model = tiny_llama(4, 4)
    arch = spec_for(model.config)
    w = read_attention(model, arch, 0)
    gen = torch.Generator().manual_seed(4)
    k, v = w.k.clone().view(4, 16, -1), w.v.clone().view(4, 16, -1)  # (heads, d, D)
    near = lambda t: t + 0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype)  # noqa: E731
    k[2], k[3], v[1], v[3] = near(k[0]), near(k[1]), near(v[0]), near(v[2])
    write_attention(model, arch, 0, w.with_(k=k.reshape(64, -1), v=v.reshape(64, -1)))
    return model


@pytest.mark.parametrize("metric", M.METRICS)
def test_grouping_on_keys_or_values_can_differ(metric):
    groups = {}
    for on in ("keys", "values"):
        model = _planted()
        cfg = registry.config_from_dict("gqa", {"kv_heads": 2, "grouping_metric": metric, "grouping_on": on})
        result = convert(model, spec_for(model.config), cfg, CALIB, progress=False)
        groups[on] = result["layers"][0]["groups"]
        assert result["layers"][0]["grouping_metric"] == metric
    assert groups == {"keys": [[0, 2], [1, 3]], "values": [[0, 1], [2, 3]]}


@pytest.mark.parametrize("metric", M.METRICS)
@pytest.mark.parametrize("on,sink", [("keys", 0), ("values", 2), ("both", 5)])
def test_hidden_copies_are_found_and_merged_exactly_by_every_criterion(metric, on, sink):
    """GQA -> MHA -> shuffle + rotate heads -> gqa(2) under each criterion: the original model again."""
    model = tiny_llama(4, 2)
    ref = logits(model, IDS)
    expand_kv(model, spec_for(model.config))
    hide_structure(model, seed=7)
    opts = {"kv_heads": 2, "grouping_metric": metric, "grouping_on": on, "sink_tokens": sink}
    convert(model, spec_for(model.config), registry.config_from_dict("gqa", opts), CALIB, progress=False)
    assert model.config.num_key_value_heads == 2
    assert rel_diff(logits(model, IDS), ref) < 1e-8


def test_the_options_stay_out_of_canonical_steps_at_their_defaults():
    plain = registry.canonical_step("gqa", {"kv_heads": 2})
    assert not {"grouping_metric", "grouping_on", "sink_tokens", "l0_schedule"} & set(plain)
    assert registry.canonical_step("gqa", {"kv_heads": 2, "grouping_metric": "energy"}) == plain
    step = registry.canonical_step("gqa", {"kv_heads": 2, "grouping_metric": "cosine", "sink_tokens": 4})
    assert step == {**plain, "grouping_metric": "cosine", "sink_tokens": 4}


@pytest.mark.parametrize(
    "opts,message",
    [
        ({"grouping_metric": "l2"}, "gqa.grouping_metric: 'l2' is not one of"),
        ({"grouping_on": "queries"}, "gqa.grouping_on: 'queries' is not one of"),
        ({"sink_tokens": -1}, "gqa.sink_tokens must be 0 or more"),
        ({"sink_tokens": 64, "seq_len": 64}, r"fewer than the calibration sequence length \(64\)"),
        ({"l0_schedule": "linear"}, "gqa.l0_schedule: 'linear' is not one of"),
    ],
)
def test_bad_values_are_one_line_errors(opts, message):
    with pytest.raises(UserError, match=message) as err:
        registry.config_from_dict("gqa", {"kv_heads": 2, **opts})
    assert "\n" not in str(err.value)
