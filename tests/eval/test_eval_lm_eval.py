"""The lm-evaluation-harness bridge, offline: a task YAML of our own over a local JSONL file.

Skipped when lm-eval is not installed (it is an optional extra: `pip install 'tensorllm[lm-eval]'`).
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from tensorllm.base.errors import UserError
from tensorllm.eval.lm_eval_bridge import run_lm_eval

DOCS = [
    {"question": "the capital of france is", "choices": ["paris", "dog"], "label": 0},
    {"question": "the capital of italy is", "choices": ["cat", "rome"], "label": 1},
    {"question": "the color of the river is", "choices": ["blue", "three"], "label": 0},
    {"question": "the language of spain is", "choices": ["red", "english"], "label": 1},
    {"question": "who was born in paris", "choices": ["poet", "river"], "label": 0},
]


@pytest.fixture
def task_dir(tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tllm_words.yaml").write_text(
        textwrap.dedent(f"""\
        task: tllm_words
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: label
        metric_list:
          - metric: acc
        """)
    )
    return tmp_path


def _reference_acc(model, tok) -> float:
    """Multiple choice as lm-eval scores it: sum of log-probs of each choice's tokens after the question."""
    hits = 0
    with torch.no_grad():
        for d in DOCS:
            scores = []
            for c in d["choices"]:
                ctx = tok(d["question"]).input_ids
                cont = tok(" " + c, add_special_tokens=False).input_ids
                ids = torch.tensor([ctx + cont])
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
                scores.append(logp[len(ctx) - 1 :].gather(1, ids[0, len(ctx) :, None]).sum().item())
            hits += int(max(range(len(scores)), key=scores.__getitem__) == d["label"])
    return hits / len(DOCS)


def test_lm_eval_local_task_matches_reference(tiny_llama, task_dir, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tok = tiny_llama
    out = run_lm_eval(model, tok, ["tllm_words"], include_path=str(task_dir), batch_size=2)
    res = out["results"]["tllm_words"]
    assert res["acc,none"] == pytest.approx(_reference_acc(model, tok))
    json.dumps(out)  # JSON-safe


@pytest.mark.slow  # an unknown name makes lm-eval index its whole task catalogue
def test_lm_eval_unknown_task(tiny_llama, task_dir):
    pytest.importorskip("lm_eval")
    model, tok = tiny_llama
    with pytest.raises(UserError, match="does not know task"):
        run_lm_eval(model, tok, ["tllm_no_such_task"], include_path=str(task_dir))


def test_lm_eval_missing_is_a_user_error(tiny_llama, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UserError, match="lm-eval is not installed"):
        run_lm_eval(*tiny_llama, ["anything"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_fewshot": -1}, "--num-fewshot must be >= 0"),
        ({"include_path": "/nonexistent/tasks"}, "--lm-eval-include /nonexistent/tasks is not a directory"),
        ({"limit": 0}, "--limit must be a positive"),
    ],
)
def test_bad_options_are_refused_before_lm_eval_is_needed(tiny_llama, monkeypatch, kwargs, match):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UserError, match=match):
        run_lm_eval(*tiny_llama, ["anything"], **kwargs)
    with pytest.raises(UserError, match="at least one task"):
        run_lm_eval(*tiny_llama, [" ", ""])
