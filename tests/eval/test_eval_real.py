"""The real BIG-bench data and the real SmolLM2-135M (float32, CPU).

Acceptance: the WikidataQA baseline computed by `evaluate` (batched, left-padded, KV cache) equals
a plain implementation written here from LASER's description (one `model.generate` and one
forward pass per example, answer length found LASER's way) on the same 30 test items.
"""

from __future__ import annotations

import json

import pytest
import torch

from tensorllm.eval import evaluate, get_task, load_task, select
from tensorllm.eval.tasks import EPISTEMIC_PREFIX


def test_bigbench_files_hold_what_we_expect(bigbench):
    raw = json.loads((bigbench / "bigbench/benchmark_tasks/qa_wikidata/task.json").read_text())["examples"]
    assert len(raw) == 20442
    wd = load_task(get_task("wikidata_qa"))
    assert len(wd.examples) == 18933 and wd.skipped == 20442 - 18933  # items with exactly one target
    assert wd.source == "bigbench-1.0.0:qa_wikidata"
    fever = load_task(get_task("fever_bigbench"))
    assert len(fever.examples) == 6612
    assert sum(e.label == 0 for e in fever.examples) == 3292  # "true" claims
    assert all(
        e.prompt.startswith("Consider the following claim: ") and "\nQ:" not in e.prompt
        for e in fever.examples
    )
    paragraphs = load_task(get_task("perplexity"))
    assert len(paragraphs.examples) == 1581
    assert all(len(e.answer) > 100 for e in paragraphs.examples[:50])


def test_bigbench_epistemic_reasoning_file_and_prompt(bigbench):
    doc = json.loads((bigbench / "bigbench/benchmark_tasks/epistemic_reasoning/task.json").read_text())
    assert len(doc["examples"]) == 2000
    # the prompt is BIG-bench's own zero-shot format, read here from the real file
    assert doc["task_prefix"] == EPISTEMIC_PREFIX and doc["example_input_prefix"] == "\n"
    assert doc["example_output_prefix"] == "\nRelation: " and doc["append_choices_to_input"] is False
    er = load_task(get_task("epistemic_reasoning"))
    assert er.source == "bigbench-1.0.0:epistemic_reasoning"
    assert len(er.examples) == 2000 and er.skipped == 0
    assert sum(e.label == 0 for e in er.examples) == 741  # entailments; 1,259 non-entailments
    first = doc["examples"][0]["input"]
    assert er.examples[0].prompt == doc["task_prefix"] + "\n" + first + "\nRelation:"
    assert all(e.prompt.count("Premise: ") == 1 and " Hypothesis: " in e.prompt for e in er.examples)
    test = select(er.examples, "test", None)
    assert len(test) == 1600 and sum(e.label == 1 for e in test) == 1012  # the majority class: 63.25%


def _answer_len_laser(tok, ids: torch.Tensor, answer: str) -> int:
    """LASER's rule: the shortest suffix of prompt+answer tokens that decodes to the answer."""
    for i in range(len(ids) - 1, -1, -1):
        if tok.decode(ids[i:], clean_up_tokenization_spaces=False).strip() == answer.strip():
            return len(ids) - i
    raise AssertionError(f"answer {answer!r} not found")


@pytest.fixture(scope="module")
def reference(smollm2, bigbench_dir):
    """Per example of the first 30 WikidataQA test items: generation and gold NLL, one at a time."""
    import tensorllm.data.bigbench as bb
    from tensorllm.eval import sources

    model, tok = smollm2
    orig = bb.data_dir
    bb.data_dir = lambda: bigbench_dir
    sources._load_builtin.cache_clear()
    try:
        items = select(load_task(get_task("wikidata_qa")).examples, "test", 30)
    finally:
        bb.data_dir = orig
        sources._load_builtin.cache_clear()
    rows = []
    with torch.no_grad():
        for e in items:
            enc = tok(e.prompt, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=10, min_new_tokens=1, do_sample=False)
            full_text = tok.decode(out[0], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            new_text = tok.decode(
                out[0, enc.input_ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            ids = tok(e.prompt + " " + e.answer, return_tensors="pt").input_ids[0]
            n = _answer_len_laser(tok, ids, e.answer)
            logp = torch.log_softmax(model(ids[None]).logits[0, :-1], dim=-1).gather(1, ids[1:, None])[:, 0]
            rows.append(
                {
                    "new": new_text,
                    "nll": -logp[-n:].mean().item(),
                    "faithful": e.answer.strip().lower() in full_text.strip().lower(),
                    "continuation": e.answer.strip().lower() in new_text.strip().lower(),
                }
            )
    return rows


@pytest.mark.real
def test_wikidata_baseline_equals_reference(smollm2, bigbench, reference):
    model, tok = smollm2
    res = evaluate(
        model, tok, "wikidata_qa", split="test", limit=30, batch_size=8, keep_examples=True, progress=False
    )
    want_acc = 100.0 * sum(r["faithful"] for r in reference) / 30
    want_loss = sum(r["nll"] for r in reference) / 30
    print(
        f"\nsmollm2-135m WikidataQA test[:30]: accuracy {res.accuracy:.2f}% (reference {want_acc:.2f}%), "
        f"loss {res.loss:.5f} (reference {want_loss:.5f})"
    )
    assert res.n == 30 and res.answer_mode == "faithful"
    assert [x["prediction"] for x in res.examples] == [r["new"] for r in reference]
    assert res.accuracy == want_acc
    assert res.loss == pytest.approx(want_loss, abs=1e-4)
    assert 0 < sum(r["faithful"] for r in reference) < 30  # the check is not vacuous


@pytest.mark.real
def test_batched_equals_one_at_a_time_on_16(smollm2, bigbench, reference):
    """One batch of 16 (maximal left padding), continuation-only accuracy."""
    model, tok = smollm2
    res = evaluate(
        model,
        tok,
        "wikidata_qa",
        split="test",
        limit=16,
        batch_size=16,
        answer_mode="continuation",
        keep_examples=True,
        progress=False,
    )
    ref = reference[:16]
    assert [x["prediction"] for x in res.examples] == [r["new"] for r in ref]
    assert [x["correct"] for x in res.examples] == [r["continuation"] for r in ref]
    assert res.accuracy == 100.0 * sum(r["continuation"] for r in ref) / 16
    assert res.loss == pytest.approx(sum(r["nll"] for r in ref) / 16, abs=1e-4)


@pytest.mark.real
def test_fever_bigbench_label_logits_real(smollm2, bigbench):
    model, tok = smollm2
    items = select(load_task(get_task("fever_bigbench")).examples, "val", 16)
    true_id, false_id = (tok(" " + w, add_special_tokens=False).input_ids for w in ("true", "false"))
    assert len(true_id) == len(false_id) == 1
    correct, nll = [], []
    with torch.no_grad():
        for e in items:
            logits = model(tok(e.prompt, return_tensors="pt").input_ids).logits[0, -1]
            pred = 0 if logits[true_id[0]] > logits[false_id[0]] else 1
            correct.append(pred == e.label)
            nll.append(-torch.log_softmax(logits, -1)[(true_id + false_id)[e.label]].item())
    res = evaluate(
        model, tok, "fever_bigbench", split="val", limit=16, batch_size=5, keep_examples=True, progress=False
    )
    assert [x["correct"] for x in res.examples] == correct
    assert res.loss == pytest.approx(sum(nll) / 16, abs=1e-4)


@pytest.mark.real
def test_epistemic_reasoning_label_logits_real(smollm2, bigbench):
    """Two labels of several tokens: decided by their first tokens' logits after the prompt; the loss
    is the gold label's mean token NLL, here from one forward pass of prompt + " " + label."""
    model, tok = smollm2
    items = select(load_task(get_task("epistemic_reasoning")).examples, "val", 16)
    labels = [tok(" " + w, add_special_tokens=False).input_ids for w in ("entailment", "non-entailment")]
    assert [len(ids) > 1 for ids in labels] == [True, True] and labels[0][0] != labels[1][0]
    correct, nll = [], []
    with torch.no_grad():
        for e in items:
            prompt = tok(e.prompt, add_special_tokens=False).input_ids
            gold = labels[e.label]
            logits = model(torch.tensor([prompt + gold])).logits[0].float()
            nxt = logits[len(prompt) - 1]
            pred = 0 if nxt[labels[0][0]] > nxt[labels[1][0]] else 1
            correct.append(pred == e.label)
            logp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
            nll.append(-logp[torch.arange(len(gold)), torch.tensor(gold)].mean().item())
    res = evaluate(
        model,
        tok,
        "epistemic_reasoning",
        split="val",
        limit=16,
        batch_size=5,
        keep_examples=True,
        progress=False,
    )
    assert res.metric == "label-logits"
    assert [x["correct"] for x in res.examples] == correct
    assert res.accuracy == pytest.approx(100.0 * sum(correct) / 16)
    assert res.loss == pytest.approx(sum(nll) / 16, abs=1e-4)
