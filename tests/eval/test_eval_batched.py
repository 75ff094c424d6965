"""Batched evaluation equals plain one-example-at-a-time code written independently here.

Tiny random models (built in conftest.py) make these fast: a Llama whose tokenizer adds BOS,
a GPT-2 with learned absolute positions (wrong position ids under left padding would show), and a
BERT masked-LM. The reference code uses `model.generate` / a plain forward per example.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from eval_helpers import WORDS  # tests/eval/eval_helpers.py

from tensorllm.base.errors import UserError
from tensorllm.eval import decoder, evaluate, get_task, load_task, select

NOUNS = [w for w in WORDS if w not in ("true", "false")]


def qa_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(2, 12)))  # varied lengths -> padding
        answer = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(1, 3)))
        out.append({"question": q + " ?", "answer": answer})
    return out


@torch.no_grad()
def reference_generative(model, tok, items, max_new_tokens):
    """Per example: HF generate (greedy, min_new_tokens=1) and the gold answer's mean NLL."""
    rows = []
    for e in items:
        enc = tok(e.prompt, return_tensors="pt")
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            min_new_tokens=1,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        full_text = tok.decode(out[0], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        new_text = tok.decode(
            out[0, enc.input_ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        ids = tok(e.prompt + " " + e.answer, return_tensors="pt").input_ids
        n_ans = len(tok(e.answer, add_special_tokens=False).input_ids)
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        nll = -logp.gather(1, ids[0, 1:, None])[-n_ans:, 0].mean().item()
        rows.append(
            {
                "new": new_text,
                "faithful": e.answer.lower() in full_text.lower(),
                "continuation": e.answer.lower() in new_text.lower(),
                "nll": nll,
            }
        )
    return rows


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_generative_batched_equals_reference(request, jsonl, which, batch_size):
    model, tok = request.getfixturevalue(which)
    path = jsonl(qa_records(25))
    items = select(load_task(get_task("hotpotqa"), path).examples, "all", None)
    ref = reference_generative(model, tok, items, 15)
    for mode in ("faithful", "continuation"):
        res = evaluate(
            model,
            tok,
            "hotpotqa",
            split="all",
            data=path,
            batch_size=batch_size,
            answer_mode=mode,
            keep_examples=True,
            progress=False,
        )
        assert res.n == 25 and res.answer_mode == mode and res.metric == "generate-substring"
        assert [x["prediction"] for x in res.examples] == [r["new"] for r in ref]
        assert [x["correct"] for x in res.examples] == [r[mode] for r in ref]
        for x, r in zip(res.examples, ref):
            assert x["nll_sum"] / x["tokens"] == pytest.approx(r["nll"], abs=1e-4)
        assert res.accuracy == pytest.approx(100.0 * sum(r[mode] for r in ref) / 25)
        assert res.loss == pytest.approx(sum(r["nll"] for r in ref) / 25, abs=1e-4)
        phases = res.seconds_by_phase  # where the evaluation's time went, inside its total
        assert set(phases) == {"tokenise", "generate", "judge", "loss"} and all(
            v >= 0 for v in phases.values()
        )
        assert sum(phases.values()) <= res.seconds and res.to_dict()["seconds_by_phase"] == phases
    assert any(r["faithful"] for r in ref)  # not vacuous: some items are judged correct


@pytest.mark.parametrize("eos_step", [0, 3])
def test_eos_stops_each_row_like_generate(tiny_llama, eos_step):
    """Use a token the model really produces as EOS: rows must stop there (never at step 0)."""
    model, tok = tiny_llama
    prompts = [tok(f"what is the capital of {w} ?").input_ids for w in NOUNS[:9]]
    free = decoder.greedy_generate(model, prompts, max_new_tokens=8, eos_ids=[], pad_id=0, progress=False)
    eos = free[0][eos_step]
    got = decoder.greedy_generate(
        model, prompts, max_new_tokens=8, eos_ids=[eos], pad_id=0, batch_size=4, progress=False
    )
    with torch.no_grad():
        for p, g in zip(prompts, got):
            out = model.generate(
                torch.tensor([p]),
                max_new_tokens=8,
                min_new_tokens=1,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=0,
            )
            ref = out[0, len(p) :].tolist()
            if eos in ref:
                ref = ref[: ref.index(eos) + 1]
            assert g == ref
    assert any(len(g) < 8 for g in got)


def test_label_logit_classification_equals_reference(tiny_llama, jsonl):
    model, tok = tiny_llama
    rng = random.Random(3)
    recs = [
        {"claim": " ".join(rng.choice(NOUNS) for _ in range(rng.randint(1, 9))), "label": rng.random() < 0.5}
        for _ in range(30)
    ]
    path = jsonl(recs)
    items = load_task(get_task("fever"), path).examples
    true_id, false_id = (tok(w, add_special_tokens=False).input_ids[0] for w in ("true", "false"))
    want_correct, want_nll = [], []
    with torch.no_grad():
        for e in items:
            logits = model(tok(e.prompt, return_tensors="pt").input_ids).logits[0, -1].float()
            pred = 0 if logits[true_id] > logits[false_id] else 1
            want_correct.append(pred == e.label)
            want_nll.append(-torch.log_softmax(logits, -1)[[true_id, false_id][e.label]].item())
    res = evaluate(
        model, tok, "fever", split="all", data=path, batch_size=7, keep_examples=True, progress=False
    )
    assert res.metric == "label-logits" and res.answer_mode is None
    assert [x["correct"] for x in res.examples] == want_correct
    assert res.accuracy == pytest.approx(100.0 * sum(want_correct) / len(items))
    assert res.loss == pytest.approx(sum(want_nll) / len(items), abs=1e-5)
    assert 0 < sum(want_correct) < len(items)  # the comparison is not vacuous
    assert set(res.seconds_by_phase) == {"tokenise", "score"}  # single-token labels: no separate loss pass


def test_bios_eight_labels(tiny_gpt2, jsonl):
    model, tok = tiny_gpt2
    profs = ["journalist", "poet", "composer", "model", "teacher", "architect", "painter", "professor"]
    path = jsonl(
        [
            {"hard_text": f"the person was born in {c}", "profession": p}
            for c, p in zip(["paris", "rome", "berlin", "madrid"] * 4, profs * 2)
        ]
    )
    ids = [tok(p, add_special_tokens=False).input_ids[0] for p in profs]
    items = load_task(get_task("bios_profession"), path).examples
    with torch.no_grad():
        want = [
            int(model(tok(e.prompt, return_tensors="pt").input_ids).logits[0, -1, ids].argmax()) == e.label
            for e in items
        ]
    res = evaluate(
        model,
        tok,
        "bios_profession",
        split="all",
        data=path,
        batch_size=5,
        keep_examples=True,
        progress=False,
    )
    assert [x["correct"] for x in res.examples] == want and res.n == 16


def test_perplexity_equals_reference(tiny_llama, jsonl):
    model, tok = tiny_llama
    rng = random.Random(5)
    texts = [" ".join(rng.choice(NOUNS) for _ in range(rng.randint(3, 40))) for _ in range(12)]
    path = jsonl([{"text": t} for t in texts])
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt").input_ids
            total += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    res = evaluate(model, tok, "perplexity", split="all", data=path, batch_size=5, progress=False)
    assert res.accuracy is None and res.metric == "token-nll"
    assert res.loss == pytest.approx(total / count, abs=1e-5)
    assert res.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_encoder_mlm_equals_reference(tiny_bert, jsonl):
    model, tok = tiny_bert
    path = jsonl(qa_records(14, seed=9))
    items = load_task(get_task("hotpotqa"), path).examples
    mask = tok.mask_token_id
    want_text, want_correct, want_nll = [], [], []
    with torch.no_grad():
        for e in items:
            ids = tok(e.prompt + " [MASK] [MASK] [MASK] [MASK] [MASK]", return_tensors="pt").input_ids[0]
            logits = model(ids[None]).logits[0]
            filled = tok.decode(logits[ids == mask].argmax(-1), skip_special_tokens=True)
            want_text.append(filled)
            want_correct.append(e.answer.lower() in filled.lower())
            ids = tok(e.prompt + " " + e.answer, return_tensors="pt").input_ids[0]
            n = len(tok(e.answer, add_special_tokens=False).input_ids)
            masked = ids.clone()
            masked[-1 - n : -1] = mask  # the answer sits just before [SEP]
            logp = torch.log_softmax(model(masked[None]).logits[0], -1)
            want_nll.append(
                -logp[torch.arange(len(ids) - 1 - n, len(ids) - 1), ids[-1 - n : -1]].mean().item()
            )
    res = evaluate(
        model, tok, "hotpotqa", split="all", data=path, batch_size=4, keep_examples=True, progress=False
    )
    assert res.model_kind == "encoder" and res.metric == "mlm-fill" and res.answer_mode == "masks"
    assert [x["prediction"] for x in res.examples] == want_text
    assert [x["correct"] for x in res.examples] == want_correct
    for x, w in zip(res.examples, want_nll):
        assert x["nll_sum"] / x["tokens"] == pytest.approx(w, abs=1e-4)


def test_encoder_label_classification(tiny_bert, jsonl):
    model, tok = tiny_bert
    path = jsonl(
        [
            {"claim": f"{a} is the capital of {b}", "label": i % 2 == 0}
            for i, (a, b) in enumerate(zip(NOUNS[:10], NOUNS[10:20]))
        ]
    )
    items = load_task(get_task("fever"), path).examples
    true_id, false_id = tok.convert_tokens_to_ids(["true", "false"])
    with torch.no_grad():
        want = []
        for e in items:
            ids = tok(e.prompt + " [MASK]", return_tensors="pt").input_ids[0]
            logits = model(ids[None]).logits[0, ids == tok.mask_token_id][0]
            want.append((0 if logits[true_id] > logits[false_id] else 1) == e.label)
    res = evaluate(
        model, tok, "fever", split="all", data=path, batch_size=3, keep_examples=True, progress=False
    )
    assert res.metric == "mlm-label" and [x["correct"] for x in res.examples] == want


def test_bad_arguments(tiny_llama, tiny_bert, jsonl):
    model, tok = tiny_llama
    path = jsonl(qa_records(3))
    with pytest.raises(UserError, match="unknown task"):
        evaluate(model, tok, "squad", progress=False)
    with pytest.raises(UserError, match="val split of task 'hotpotqa' is empty"):
        evaluate(model, tok, "hotpotqa", split="val", data=path, progress=False)
    with pytest.raises(UserError, match="--limit"):
        evaluate(model, tok, "hotpotqa", split="all", limit=0, data=path, progress=False)
    with pytest.raises(UserError, match="unknown answer mode"):
        evaluate(model, tok, "hotpotqa", split="all", data=path, answer_mode="prompt", progress=False)
    with pytest.raises(UserError, match="batch size"):
        evaluate(model, tok, "hotpotqa", split="all", data=path, batch_size=0, progress=False)
    bert, btok = tiny_bert
    with pytest.raises(UserError, match="perplexity task needs a decoder"):
        evaluate(bert, btok, "perplexity", data=jsonl([{"text": "a b c"}], "p.jsonl"), progress=False)
    with pytest.raises(UserError, match="no language-model head"):
        evaluate(bert.bert, btok, "hotpotqa", split="all", data=path, progress=False)


def test_custom_task_spec(tiny_llama, jsonl):
    from tensorllm.eval import TaskSpec
    from tensorllm.eval.tasks import parse_hotpot

    spec = TaskSpec("capitals", "generate", "my own task", parse_hotpot, "question, answer", max_new_tokens=3)
    path = jsonl(qa_records(10))
    res = evaluate(*tiny_llama, spec, split="test", data=path, keep_examples=True, progress=False)
    assert res.task == "capitals" and res.n == 8
    assert all(
        len(tiny_llama[1](x["prediction"], add_special_tokens=False).input_ids) <= 3 for x in res.examples
    )


def test_hotpot_drops_long_answers_and_restores_train_mode(tiny_llama, jsonl):
    model, tok = tiny_llama
    long_answer = " ".join(["paris"] * 16)
    path = jsonl(qa_records(6) + [{"question": "what ?", "answer": long_answer}])
    model.train()
    try:
        res = evaluate(model, tok, "hotpotqa", split="all", data=path, progress=False)
        assert model.training  # evaluate switched to eval() and back
    finally:
        model.eval()
    assert res.n == 6 and res.skipped == 1


def test_the_answer_length_filter_tokenises_a_dataset_once_per_tokenizer(tiny_llama, jsonl):
    from tensorllm.eval.evaluate import _short_answers

    _, tok = tiny_llama
    calls = []

    class Counting:  # the tokenizer, counting its calls
        def __call__(self, texts, **kw):
            calls.append(len(texts))
            return tok(texts, **kw)

    counting = Counting()
    path = jsonl(qa_records(6) + [{"question": "what ?", "answer": " ".join(["paris"] * 16)}])
    dataset = load_task(get_task("hotpotqa"), path)
    first = _short_answers(counting, dataset, 15)
    assert _short_answers(counting, dataset, 15) is first and calls == [7] and len(first) == 6
    assert len(_short_answers(counting, dataset, 100)) == 7 and calls == [7, 7]  # another limit: its own pass
    other = Counting()
    _short_answers(other, dataset, 15)
    assert calls == [7, 7, 7]  # another tokenizer: its own pass


def test_left_pad_and_length_batches_against_plain_loops():
    """The vectorised padding and the batch order against row-by-row loops written out here."""
    import random

    from tensorllm.eval.decoder import left_pad, length_batches

    rng = random.Random(3)
    seqs = [[rng.randrange(1, 99) for _ in range(rng.randint(1, 30))] for _ in range(200)]
    seqs[7] = (4, 5)  # the encode memo hands out tuples too
    ids, mask, pos = left_pad(seqs, 0, "cpu")
    width = max(len(s) for s in seqs)
    for r, s in enumerate(seqs):
        pad = width - len(s)
        assert ids[r].tolist() == [0] * pad + list(s)
        assert mask[r].tolist() == [0] * pad + [1] * len(s)
        assert pos[r].tolist() == [0] * pad + list(range(len(s)))
    lengths = [len(s) for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: (-lengths[i], i))  # longest first, ties by index
    batches = length_batches(lengths, 16, 300)
    assert [i for b in batches for i in b] == order
    assert all(len(b) <= 16 and len(b) * lengths[b[0]] <= 300 for b in batches)


def test_scoring_runs_on_a_frozen_heap_and_leaves_it_unfrozen(tiny_llama, jsonl, monkeypatch):
    import gc

    from tensorllm.base import heap
    from tensorllm.eval.scoring import SCORERS  # the dict evaluate looks up

    model, tok = tiny_llama
    path = jsonl(qa_records(5))
    seen = []
    scorer = SCORERS[("decoder", "generate")]

    def spying(*args):
        seen.append(gc.get_freeze_count())
        return scorer(*args)

    monkeypatch.setitem(SCORERS, ("decoder", "generate"), spying)
    plain = evaluate(model, tok, "hotpotqa", split="all", data=path, progress=False)
    assert seen and seen[0] > heap._BASELINE  # base/heap.py: no full collection walks the model mid-run
    assert gc.get_freeze_count() <= heap._BASELINE
    monkeypatch.undo()
    again = evaluate(model, tok, "hotpotqa", split="all", data=path, progress=False)
    assert (again.accuracy, again.loss) == (plain.accuracy, plain.loss)
