"""End to end on the real SmolLM2-135M-Instruct (`smollm2-135m`: Llama, 30 layers, 9 query / 3 K/V
heads, d_model 576, head_dim 64), through the API and the `tensorllm` command line.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tensorllm
from tensorllm.base.layers import parse_layers

pytestmark = pytest.mark.real

LAYER, RANKS = 9, (144, 48, 4)
SHAPE = [576, 64, 8, 3]  # (d_model, head_dim, 2g+2 = Q1..Q3, K, V, O1..O3, K/V heads)

PLAIN_TRANSFORMERS = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, ids_file, out_file, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))  # the same reduction order as the in-memory reference
model = AutoModelForCausalLM.from_pretrained(path).eval()
tok = AutoTokenizer.from_pretrained(path)
ids = torch.load(ids_file)
with torch.no_grad():
    logits = model(input_ids=ids).logits
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                         do_sample=False, pad_token_id=tok.eos_token_id)
assert not any(m == "tensorllm" or m.startswith("tensorllm.") for m in sys.modules), "tensorllm was imported"
torch.save({"logits": logits, "new_tokens": gen[0, ids.shape[1]:], "text": tok.decode(gen[0, ids.shape[1]:])},
           out_file)
"""


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def reference_logits(smollm2, smollm2_ids):
    return logits(smollm2.model, smollm2_ids)


@pytest.fixture(scope="module")
def compressed(smollm2):
    """The model compressed in memory through the API: (model, report)."""
    model = copy.deepcopy(smollm2.model)
    return tensorllm.compress(
        model,
        {"device": "cpu", "steps": [{"method": "tucker", "layers": [LAYER], "ranks": list(RANKS)}]},
        progress=False,
    )


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory, run_cli):
    out = tmp_path_factory.mktemp("smollm2") / "l9"
    rc, stdout, stderr = run_cli(
        "compress",
        "smollm2-135m",
        "--method",
        "tucker",
        "--layers",
        str(LAYER),
        "--ranks",
        ",".join(map(str, RANKS)),
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert rc == 0, stderr
    assert "saved checkpoint" in stdout
    return out


def test_full_ranks_on_all_layers_reproduce_the_model(smollm2_model, smollm2_ids, reference_logits):
    _, report = tensorllm.compress(
        smollm2_model,
        {"device": "cpu", "steps": [{"method": "tucker", "layers": "all", "ranks": [1.0, 1.0, 1.0]}]},
        progress=False,
    )
    records = report.steps[0]["layers"]
    assert [r["layer"] for r in records] == list(range(30))
    assert all(r["tensor_shape"] == SHAPE and r["ranks"] == SHAPE[:3] for r in records)
    delta = (logits(smollm2_model, smollm2_ids) - reference_logits).abs().max().item()
    assert delta < 1e-3, f"full-rank Tucker on all 30 layers moved the logits by {delta:.2e}"


def test_cli_compress_writes_checkpoint_recipe_and_report(cli_out, compressed):
    names = {p.name for p in cli_out.iterdir()}
    assert {"config.json", "model.safetensors", "recipe.yaml", "report.json", "tokenizer.json"} <= names

    recipe = yaml.safe_load((cli_out / "recipe.yaml").read_text())
    assert recipe["steps"][0]["method"] == "tucker"
    assert parse_layers(recipe["steps"][0]["layers"], 30) == [LAYER]  # the CLI keeps the text it was given
    assert recipe["steps"][0]["ranks"] == list(RANKS)

    report = json.loads((cli_out / "report.json").read_text())
    rec = report["steps"][0]["layers"][0]
    assert rec["layer"] == LAYER and rec["ranks"] == list(RANKS) and rec["tensor_shape"] == SHAPE
    D, d, H, Hkv, g = 576, 64, 9, 3, 3
    assert rec["params_before"] == 2 * D * d * (H + Hkv)
    after = D * RANKS[0] + d * RANKS[1] + (2 * g + 2) * RANKS[2] + Hkv * RANKS[0] * RANKS[1] * RANKS[2]
    assert rec["params_after"] == after
    assert rec["compression_rate"] == pytest.approx(2 * D * d * (H + Hkv) / after)
    assert 0 < rec["rel_error"] < 1
    assert report["model"]["architecture"] == "llama" and report["model"]["kv_heads"] == 3

    # the CLI and the API did the same thing, bit for bit
    api_rec = compressed[1].steps[0]["layers"][0]
    assert api_rec["rel_error"] == rec["rel_error"] and api_rec["ranks"] == rec["ranks"]
    saved = load_file(cli_out / "model.safetensors")
    state = compressed[0].state_dict()
    assert saved.keys() <= state.keys()
    for name, t in saved.items():
        assert torch.equal(t, state[name]), name


def test_plain_transformers_loads_and_generates(
    cli_out, compressed, smollm2, smollm2_ids, reference_logits, run_python, tmp_path
):
    torch.save(smollm2_ids, tmp_path / "ids.pt")
    proc = run_python(
        PLAIN_TRANSFORMERS, cli_out, tmp_path / "ids.pt", tmp_path / "result.pt", torch.get_num_threads()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt")
    want = logits(compressed[0], smollm2_ids)
    delta = (result["logits"] - want).abs().max().item()
    assert delta < 1e-5, f"reloaded checkpoint differs from the in-memory compressed model by {delta:.2e}"
    assert (want - reference_logits).abs().max().item() > 1e-2  # and the compression did change the model
    assert len(result["new_tokens"]) == 8 and result["text"].strip()


def test_recipe_rerun_reproduces_identical_weights(cli_out, run_cli, tmp_path):
    out = tmp_path / "rerun"
    rc, _, stderr = run_cli("compress", "smollm2-135m", "--recipe", cli_out / "recipe.yaml", "--out", out)
    assert rc == 0, stderr
    first, second = load_file(cli_out / "model.safetensors"), load_file(out / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert (out / "recipe.yaml").read_text() == (cli_out / "recipe.yaml").read_text()


def test_cli_expand_kv_gives_an_equivalent_multi_head_checkpoint(
    run_cli, smollm2_ids, reference_logits, tmp_path
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "mha"
    rc, stdout, stderr = run_cli("expand-kv", "smollm2-135m", "--out", out)
    assert rc == 0, stderr
    assert "expanded 3 -> 9" in stdout
    assert json.loads((out / "report.json").read_text())["kv_heads_before"] == 3
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.num_key_value_heads == 9
    assert model.model.layers[LAYER].self_attn.k_proj.weight.shape == (576, 576)
    delta = (logits(model, smollm2_ids) - reference_logits).abs().max().item()
    assert delta < 1e-4, f"expand-kv moved the logits by {delta:.2e}"


def test_cli_info_json(run_cli):
    rc, stdout, stderr = run_cli("info", "smollm2-135m", "--json")
    assert rc == 0, stderr
    info = json.loads(stdout)
    m = info["model"]
    assert (m["layers"], m["heads"], m["kv_heads"], m["head_dim"], m["hidden"]) == (30, 9, 3, 64, 576)
    assert m["architecture"] == "llama"
    assert len(info["layers"]) == 30
    for row in info["layers"]:
        assert row["tensor"] == SHAPE
        assert (row["q"], row["k"], row["v"], row["o"]) == ([576, 576], [192, 576], [192, 576], [576, 576])
        assert row["attn_params"] == 2 * 576 * 576 + 2 * 192 * 576
