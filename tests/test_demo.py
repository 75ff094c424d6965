"""The main job (`tensorllm demo`) on the real SmolLM2, with a small evaluation subset."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.real


def test_demo_writes_a_checkpoint_that_plain_transformers_reloads(tmp_path, run_cli, smollm2):
    out = tmp_path / "demo"
    rc, stdout, stderr = run_cli("demo", "--out", str(out), "--eval-items", "8")
    assert rc == 0, stderr[-2000:]
    assert "reloaded with plain transformers" in stdout and "8 test items" in stdout

    report = json.loads((out / "report.json").read_text())
    demo = report["extra"]["demo"]
    for key in ("wikidata_before", "wikidata_after"):  # held-out items: the default layer was picked on val
        assert demo[key]["split"] == "test" and demo[key]["n"] == 8 and demo[key]["task"] == "wikidata_qa"
    assert len(demo["generations_after"]) == 3 and demo["max_abs_logit_change"] > 1e-2
    assert yaml.safe_load((out / "recipe.yaml").read_text())["steps"][0]["layers"] == [5]

    saved = load_file(out / "model.safetensors")
    original = smollm2.model.state_dict()
    changed = {n for n, t in saved.items() if not (t == original[n]).all()}
    assert changed == {f"model.layers.5.self_attn.{m}_proj.weight" for m in "qkvo"}
