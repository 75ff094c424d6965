"""Tasks as data: split arithmetic, every loader on small files, malformed input, bad arguments."""

from __future__ import annotations

import json

import pytest

from tensorllm.base.errors import UserError
from tensorllm.eval import TASKS, get_task, load_task, select, split_examples
from tensorllm.eval.tasks import (
    BIOS_PROFESSIONS,
    EPISTEMIC_LABELS,
    bios_prompt,
    epistemic_prompt,
    fever_prompt,
    hotpot_prompt,
)


@pytest.mark.parametrize(
    "n, n_val",
    [(0, 0), (1, 0), (4, 0), (5, 1), (9, 1), (10, 2), (14, 2), (15, 3), (18933, 3786), (6612, 1322)],
)
def test_split_is_first_fifth_then_rest(n, n_val):
    items = list(range(n))
    val, test, everything = (split_examples(items, s) for s in ("val", "test", "all"))
    assert val == items[:n_val] and test == items[n_val:] and everything == items
    assert len(val) == int(0.2 * n)  # LASER's own arithmetic


def test_select_limits_and_rejects_empty_or_bad():
    items = list(range(20))
    assert select(items, "val", None) == [0, 1, 2, 3]
    assert select(items, "test", 3) == [4, 5, 6]
    assert select(items, "all", 100) == items
    with pytest.raises(UserError, match="--limit"):
        select(items, "test", 0)
    with pytest.raises(UserError, match="--limit"):
        select(items, "test", -2)
    with pytest.raises(UserError, match="val split .* is empty"):
        select(items[:4], "val", None, "wikidata_qa")
    with pytest.raises(UserError, match="unknown split"):
        select(items, "train", None)


def test_unknown_task():
    with pytest.raises(UserError, match="unknown task 'nope'.*wikidata_qa"):
        get_task("nope")
    assert set(TASKS) == {
        "wikidata_qa",
        "fever_bigbench",
        "epistemic_reasoning",
        "fever",
        "hotpotqa",
        "bios_profession",
        "perplexity",
    }


def test_wikidata_loader_keeps_single_targets(jsonl, tmp_path):
    path = jsonl(
        [
            {"input": " The capital of France is ", "target": "Paris"},
            {"input": "The color of the sky is", "target": ["blue", "grey"]},
            {"input": "The language of Spain is", "target": ["Spanish"]},
        ]
    )
    ds = load_task(get_task("wikidata_qa"), path)
    assert [(e.prompt, e.answer) for e in ds.examples] == [
        ("The capital of France is", "Paris"),
        ("The language of Spain is", "Spanish"),
    ]
    assert ds.skipped == 1 and ds.source == str(path.resolve())
    # A BIG-bench task.json ({"examples": [...]}) and a JSON list read the same way
    bb = tmp_path / "task.json"
    bb.write_text(json.dumps({"name": "qa_wikidata", "examples": [{"input": "a is", "target": "b"}]}))
    assert load_task(get_task("wikidata_qa"), bb).examples[0].answer == "b"
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps([{"input": "a is", "target": "b"}, {"input": "c is", "target": "d"}], indent=2))
    assert len(load_task(get_task("wikidata_qa"), lst).examples) == 2


def test_fever_loaders(jsonl):
    records = [
        {"claim": "Paris is in France.", "label": "SUPPORTS"},
        {"claim": "Rome is in Spain", "label": 0},
        {"claim": "Nobody knows", "label": "NOT ENOUGH INFO"},
        {"claim": "Cats bark", "label": False},
        {"claim": "Dogs bark?", "label": "true"},
        {
            "id": 7,
            "input": "On June 2017, the following claim was made: Berlin is a city.\n"
            "Q: Was this claim true or false?",
            "target_scores": {"true": 1, "false": 0},
        },
    ]
    for name in ("fever", "fever_bigbench"):
        ds = load_task(get_task(name), jsonl(records, f"{name}.jsonl"))
        assert [e.answer for e in ds.examples] == ["true", "false", "false", "true", "true"]
        assert [e.label for e in ds.examples] == [0, 1, 1, 0, 0]
        assert ds.skipped == 1
        assert ds.examples[0].prompt == (
            "Consider the following claim: Paris is in France. Is this claim true or false. The claim is"
        )
        assert ds.examples[1].prompt == fever_prompt("Rome is in Spain")
        assert "Rome is in Spain. Is this claim" in ds.examples[1].prompt
        assert ds.examples[4].prompt.startswith("Consider the following claim: Berlin is a city. Is this")


def test_epistemic_loader_reads_bigbench_records(tmp_path, jsonl):
    pair = "Premise: Ava knows that a dog runs. Hypothesis: A dog runs."
    records = [
        {"input": pair, "target_scores": {"entailment": 1, "non-entailment": 0}},
        {
            "input": " Premise: Ava assumes that a dog runs. Hypothesis: A dog runs. ",
            "target_scores": {"non-entailment": 1, "entailment": 0},
        },
        {"input": "Premise: Bo sees that it rains. Hypothesis: It rains.", "label": "Entailment"},
    ]
    task_json = tmp_path / "task.json"  # BIG-bench's own layout: an object with "examples"
    task_json.write_text(json.dumps({"name": "epistemic_reasoning", "examples": records}))
    task = get_task("epistemic_reasoning")
    assert task.kind == "classify" and task.labels == EPISTEMIC_LABELS == ("entailment", "non-entailment")
    ds = load_task(task, task_json)
    assert [(e.answer, e.label) for e in ds.examples] == [
        ("entailment", 0),
        ("non-entailment", 1),
        ("entailment", 0),
    ]
    assert ds.skipped == 0
    assert ds.examples[0].prompt == (
        "Identify the relation between the following premises and hypotheses, choosing from the options "
        "'entailment' or 'non-entailment'.\n\n" + pair + "\nRelation:"
    )
    assert ds.examples[1].prompt == epistemic_prompt(
        "Premise: Ava assumes that a dog runs. Hypothesis: A dog runs."
    )
    bad = [
        ({"input": pair, "target_scores": {"entailment": 1, "contradiction": 0}}, "target_scores"),
        ({"input": pair, "target_scores": {"entailment": 1, "non-entailment": 1}}, "target_scores"),
        ({"input": pair, "label": "neutral"}, "'label' must be"),
        ({"input": pair}, "missing field 'target_scores'"),
        ({"target_scores": {"entailment": 1, "non-entailment": 0}}, "missing field 'input'"),
    ]
    for i, (record, message) in enumerate(bad):
        with pytest.raises(UserError, match=message):
            load_task(task, jsonl([record], f"bad{i}.jsonl"))


def test_hotpot_loader_and_prompt(jsonl):
    ds = load_task(
        get_task("hotpotqa"),
        jsonl(
            [
                {"question": "Who wrote Hamlet?", "answer": "Shakespeare"},
                {"question": "The river of Paris", "answer": "Seine"},
            ]
        ),
    )
    assert [e.prompt for e in ds.examples] == [
        "Who wrote Hamlet? The answer is",
        "The river of Paris? The answer is",
    ]
    assert hotpot_prompt("Name it.") == "Name it. The answer is"
    assert get_task("hotpotqa").max_new_tokens == 15 and get_task("wikidata_qa").max_new_tokens == 10


def test_bios_loader_names_and_labhc_ids(jsonl):
    ds = load_task(
        get_task("bios_profession"),
        jsonl(
            [
                {"hard_text": "She writes for a newspaper", "profession": "journalist"},
                {"text": "He designs houses.", "profession": 1},  # LabHC id 1 = architect
                {"hard_text": "He fixes teeth", "profession": 6},  # dentist: not one of the 8
                {"hard_text": "She teaches at a university", "profession": "Professor"},
                {"hard_text": "She is a surgeon", "profession": "surgeon"},
            ]
        ),
    )
    assert [(e.answer, e.label) for e in ds.examples] == [
        ("journalist", 0),
        ("architect", 5),
        ("professor", 7),
    ]
    assert ds.skipped == 2
    assert ds.examples[1].prompt == bios_prompt("He designs houses.")
    assert ds.examples[0].prompt == (
        "Consider the following text: She writes for a newspaper. What is the "
        "profession of the person in this text? The profession of this person is"
    )
    assert len(BIOS_PROFESSIONS) == 8


def test_perplexity_loader(jsonl):
    ds = load_task(get_task("perplexity"), jsonl([{"text": "One paragraph."}, {"text": "Another one."}]))
    assert [(e.prompt, e.answer) for e in ds.examples] == [("", "One paragraph."), ("", "Another one.")]


def test_malformed_json_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"input": "a is", "target": "b"}\n\n{"input": "c is", "target": \n{"input": "x", "target": "y"}\n'
    )
    with pytest.raises(UserError, match=r"bad.jsonl line 3: not valid JSON"):
        load_task(get_task("wikidata_qa"), path)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"input": "a is"}, "line 2: missing field 'target'"),
        ({"input": 5, "target": "b"}, "line 2: field 'input' must be a string"),
        ({"input": "   ", "target": "b"}, "line 2: field 'input' is empty"),
        ({"input": "a is", "target": 3}, "line 2: field 'target' must be"),
    ],
)
def test_malformed_record_line_number(jsonl, record, message):
    path = jsonl([{"input": "ok is", "target": "fine"}, record])
    with pytest.raises(UserError, match=message):
        load_task(get_task("wikidata_qa"), path)


def test_records_of_json_documents_carry_line_numbers(tmp_path):
    """A JSON list or a BIG-bench task.json: the bad record's first line (and its index) in the error."""
    lst = tmp_path / "list.json"
    lst.write_text('[\n  {"input": "a is", "target": "b"},\n\n  {"input": "c is",\n   "target": 3}\n]\n')
    with pytest.raises(UserError, match=r"list.json line 4 \(item 2\): field 'target' must be"):
        load_task(get_task("wikidata_qa"), lst)
    bb = tmp_path / "task.json"
    bb.write_text(
        '{"name": "x", "keywords": ["a", {"b": "]}"}],\n "examples": [\n'
        '  {"input": "a is", "target": "b"}, {"input": "c is", "target": "d"},\n  {"input": "e is"}\n ]}\n'
    )
    with pytest.raises(UserError, match=r"task.json line 4 \(example 3\): missing field 'target'"):
        load_task(get_task("wikidata_qa"), bb)


def test_other_bad_files(jsonl, tmp_path):
    with pytest.raises(UserError, match="line 1: expected a JSON object"):
        load_task(get_task("hotpotqa"), jsonl([["not", "an", "object"]]))
    with pytest.raises(UserError, match="line 1: field 'label' must be"):
        load_task(get_task("fever"), jsonl([{"claim": "x", "label": "maybe"}]))
    with pytest.raises(UserError, match="holds no usable bios_profession examples"):
        load_task(get_task("bios_profession"), jsonl([{"hard_text": "x", "profession": "dentist"}]))
    with pytest.raises(UserError, match="does not exist"):
        load_task(get_task("hotpotqa"), tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        load_task(get_task("hotpotqa"), empty)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "a", "answer": "b"},\n {"question": ]')
    with pytest.raises(UserError, match="broken.json line 2"):
        load_task(get_task("hotpotqa"), broken)


def test_hf_only_tasks_need_data_offline(monkeypatch):
    import sys

    from tensorllm.eval import sources

    sources._load_builtin.cache_clear()
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(UserError, match="pass --data FILE with fields question, answer"):
        load_task(get_task("hotpotqa"))
    sources._load_builtin.cache_clear()


def test_hf_tasks_fail_fast_without_the_hub(monkeypatch):
    pytest.importorskip("datasets")
    from tensorllm.eval import sources

    sources._load_builtin.cache_clear()
    monkeypatch.setattr(sources, "_hub_unreachable", lambda: "no DNS")
    for task, fields in (("fever", "claim, label"), ("bios_profession", "hard_text, profession")):
        with pytest.raises(
            UserError, match=f"unreachable \\(no DNS\\); pass --data FILE with fields {fields}"
        ):
            load_task(get_task(task))
    sources._load_builtin.cache_clear()


def test_file_cache_sees_edits(jsonl):
    path = jsonl([{"question": "q1", "answer": "a"}])
    assert len(load_task(get_task("hotpotqa"), path).examples) == 1
    rows = [{"question": "q1", "answer": "a"}, {"question": "q2", "answer": "b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_task(get_task("hotpotqa"), path).examples) == 2
