"""Bad input on the new families through the command line: one `error:` line, exit code 2, nothing written.

- a supported family with a feature no entry describes (Falcon with ALiBi positions) names the feature;
- a conversion that would change a norm's shape (OLMo-2's key norm over the whole projection) says why;
- the MoE router is never a LASER matrix; an expert that does not exist is named.
And the same commands on good input: `info` on a multimodal Gemma-3, LASER on one expert of a Qwen3-MoE.
"""

from __future__ import annotations

import json

import pytest


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tmp_path_factory.mktemp("archs_cli")


def test_falcon_with_alibi_names_the_feature(tiny, run_cli, ckpts):
    ckpt = tiny.save(ckpts / "falcon-alibi", "falcon-mha", alibi=True)
    rc, _, err = run_cli("info", ckpt)
    assert rc == 2 and "ALiBi" in _one_error_line(err)
    out = ckpts / "falcon-alibi-out"
    rc, _, err = run_cli("compress", ckpt, "--layers", "0", "--ranks", "8,4,2", "--out", out)
    assert rc == 2 and "ALiBi position biases (alibi=True)" in _one_error_line(err)
    assert not out.exists()


def test_gqa_on_olmo2_says_the_key_norm_spans_the_projection(tiny, run_cli, ckpts):
    ckpt = tiny.save(ckpts / "olmo2", "olmo2", num_key_value_heads=4)
    out = ckpts / "olmo2-gqa"
    args = ("--kv-heads", "2", "--out", out, "--calib-tokens", "64", "--seq-len", "32")
    rc, _, err = run_cli("gqa", ckpt, *args)
    assert rc == 2 and "whole K projection" in _one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--matrix", "mlp.gate"), "router"),
        (("--matrix", "experts.up", "--expert", "7"), "expert 7 does not exist"),
    ],
)
def test_laser_on_the_router_or_a_missing_expert_is_refused(tiny, run_cli, ckpts, args, message):
    ckpt = ckpts / "qwen3_moe"
    if not ckpt.exists():
        tiny.save(ckpt, "qwen3_moe")
    out = ckpts / "moe-bad"
    rc, _, err = run_cli(
        "compress", ckpt, "--method", "laser", "--layers", "0", "--rank", "2", *args, "--out", out
    )
    assert rc == 2 and message in _one_error_line(err)
    assert not out.exists()


def test_laser_on_one_expert_through_the_cli(tiny, run_cli, ckpts):
    ckpt = ckpts / "qwen3_moe"
    if not ckpt.exists():
        tiny.save(ckpt, "qwen3_moe")
    out = ckpts / "moe-laser"
    rc, _, err = run_cli(
        "compress",
        ckpt,
        "--method",
        "laser",
        "--layers",
        "1",
        "--matrix",
        "experts.up",
        "--expert",
        "1",
        "--rank",
        "2",
        "--out",
        out,
    )
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    layer = report["steps"][0]["layers"][0]
    assert layer["experts"] == [1] and layer["matrix"] == "mlp.experts.gate_up_proj[up]"
    assert "RMSNorm of queries and keys" in report["model"]["qk_norms"]  # the report names the q/k norms


def test_info_on_a_multimodal_gemma3_describes_its_language_model(tiny, run_cli, ckpts):
    ckpt = tiny.save(ckpts / "gemma3", "gemma3")
    rc, out, err = run_cli("info", ckpt, "--json")
    assert rc == 0, err
    model = json.loads(out)["model"]
    assert (model["architecture"], model["heads"], model["kv_heads"], model["head_dim"], model["layers"]) == (
        "gemma3",
        4,
        1,
        32,
        2,
    )


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_info_counts_the_experts_and_the_router_as_ffn_parameters(tiny, run_cli, ckpts, family):
    from tensorllm.archs import blocks, get_module, spec_for

    ckpt = tiny.save(ckpts / family, family)
    rc, out, err = run_cli("info", ckpt, "--json")
    assert rc == 0, err
    layers = json.loads(out)["layers"]
    model = tiny.model(family)
    arch = spec_for(model.config)
    for row, block in zip(layers, blocks(model, arch)):
        want = sum(p.numel() for p in get_module(block, arch.experts).parameters())
        want += get_module(block, arch.router).weight.numel()
        assert row["ffn_params"] == want > 0
