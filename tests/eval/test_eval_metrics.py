"""The per-item scores and metrics of evaluate (eval/metrics.py), the item span a racing search
asks for, and the tokenisation memo (the same ids, the tokenizer asked once per text)."""

from __future__ import annotations

import pytest
from test_eval_batched import qa_records

from tensorllm.base.errors import UserError
from tensorllm.eval import evaluate, metrics
from tensorllm.eval import tokens as tokens_mod


@pytest.mark.parametrize(
    "answer, continuation, expected",
    [
        ("Paris", " Paris, the capital of France", True),
        ("Paris", " paris.", True),
        ("the Beatles", " Beatles\nand more", True),  # articles and case normalised away
        ("Paris", " the city of Paris", False),  # contained, but not the first span
        ("Paris", " London. Paris", False),
        ("3.5", " 3.5 metres", False),  # the span is "3.5 metres": a number with a decimal point stays whole
        ("3.5 metres", " 3.5 metres", True),
        ("Paris", "", False),
    ],
)
def test_exact_match_of_the_first_answer_span(answer, continuation, expected):
    assert metrics.exact_first_span(answer, continuation) is expected


def test_per_item_scores_aggregate_to_the_metrics():
    items = metrics.per_item(
        "generate", [True, False], [(2.0, 1), (3.0, 2)], {"faithful": [True, False], "exact": [False, False]}
    )
    assert items == {"faithful": "10", "exact": "00", "nll": [2.0, 1.5]}
    assert metrics.aggregate(items) == {"faithful": 50.0, "exact": 0.0, "loss": 1.75}
    assert metrics.item_key("accuracy", "faithful", "generate") == "faithful"
    assert metrics.item_key("accuracy", "masks", "generate") == "continuation"
    assert metrics.item_key("accuracy", None, "classify") == "correct"
    assert metrics.item_key("loss", None, "classify") == "nll"


@pytest.mark.parametrize("mode", ["faithful", "continuation"])
def test_evaluate_keeps_every_metric_per_item(tiny_llama, jsonl, mode):
    model, tok = tiny_llama
    path = jsonl(qa_records(12))
    res = evaluate(
        model, tok, "hotpotqa", split="all", data=path, answer_mode=mode, keep_examples=True, progress=False
    )
    assert set(res.items) == {"faithful", "continuation", "exact", "nll"}
    assert res.items[mode] == metrics.bits(x["correct"] for x in res.examples)
    assert [round(v, 6) for v in res.items["nll"]] == [
        round(x["nll_sum"] / x["tokens"], 6) for x in res.examples
    ]
    assert res.metrics[mode] == pytest.approx(res.accuracy) and res.metrics["loss"] == res.loss
    assert res.items["continuation"] == metrics.bits(
        e["answer"].strip().lower() in e["prediction"].strip().lower() for e in res.examples
    )
    assert "items" not in res.to_dict() and res.to_dict()["metrics"] == res.metrics


def test_a_span_scores_those_items_as_the_whole_split_does(tiny_llama, jsonl):
    model, tok = tiny_llama
    path = jsonl(qa_records(12))
    kw = dict(split="all", data=path, progress=False, batch_size=64)
    whole = evaluate(model, tok, "hotpotqa", **kw)
    part = evaluate(model, tok, "hotpotqa", span=(4, 10), **kw)
    assert part.n == 6 and part.items["faithful"] == whole.items["faithful"][4:10]
    assert part.items["nll"] == pytest.approx(whole.items["nll"][4:10], abs=1e-5)
    with pytest.raises(UserError, match="outside the all split"):
        evaluate(model, tok, "hotpotqa", span=(4, 13), **kw)


def test_classification_keeps_correct_and_nll(tiny_llama, jsonl):
    model, tok = tiny_llama
    path = jsonl([{"claim": f"claim {i}", "label": "true" if i % 2 else "false"} for i in range(6)])
    res = evaluate(model, tok, "fever", split="all", data=path, progress=False)
    assert set(res.items) == {"correct", "nll"} and len(res.items["correct"]) == 6
    assert res.metrics["correct"] == pytest.approx(res.accuracy)


def test_tokenisation_is_remembered_per_tokenizer(tiny_llama, monkeypatch):
    _, tok = tiny_llama
    texts = [f"what is the capital of {w} ?" for w in ("paris", "rome", "paris")]
    first = tokens_mod.encode(tok, texts)
    seen = []
    real = type(tok).__call__
    monkeypatch.setattr(
        type(tok), "__call__", lambda self, t, **kw: seen.append(list(t)) or real(self, t, **kw)
    )
    again = tokens_mod.encode(tok, texts + ["what is the capital of rome"])
    assert again[:3] == first and seen == [["what is the capital of rome"]]  # only the new text
    assert first[0] == list(real(tok, texts[:1], add_special_tokens=True)["input_ids"][0])
    again[0].append(-1)  # a caller may extend the lists it gets: the memo keeps its own
    assert tokens_mod.encode(tok, texts[:1]) == first[:1]
