"""The evaluation tasks as data: one TaskSpec per task (LASER protocol, arXiv 2312.13558).

A task says how to turn one raw record into an `Example` (the model prompt and the gold answer),
what kind of scoring it uses, and where its records come from when no `--data FILE` is given.

- wikidata_qa (generate, 10 new tokens): BIG-bench qa_wikidata, prompt = the raw input.
  Fields: `input`, `target` (a string, or a list: only items with exactly one target are kept).
- fever_bigbench (classify " true" / " false"): BIG-bench fact_checker/fever, the claim cut out of
  the BIG-bench input and put in LASER's FEVER prompt. Fields: `claim`, `label`, or BIG-bench's
  `input`, `target_scores`.
- fever (classify): the same on LASER's set, EleutherAI/fever v1.0 paper_dev + paper_test with
  conflicting claims removed. Fields: `claim`, `label`.
- hotpotqa (generate, 15 new tokens): prompt `<question> The answer is` ("?" added when the
  question has no end punctuation, as LASER's code). Fields: `question`, `answer`.
- bios_profession (classify among 8 single-token professions): LASER's Bios prompt.
  Fields: `hard_text` (or `text`), `profession`.
- epistemic_reasoning (classify " entailment" / " non-entailment"): BIG-bench epistemic_reasoning,
  2,000 premise/hypothesis pairs, prompted with BIG-bench's own zero-shot format (its task prefix,
  the pair, then `Relation:`). Fields: `input`, `target_scores` (or `label`).
- perplexity: token-weighted mean NLL of English paragraphs (no prompt). Field: `text`.

`label` may be true/false, "true"/"false", 1/0, or FEVER's "SUPPORTS"/"REFUTES" ("NOT ENOUGH INFO"
records are skipped). `profession` is one of the 8 names or LabHC/bias_in_bios' integer id; other
professions are skipped, as LASER does. Records a task skips are counted, not errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tensorllm.base.errors import UserError

Kind = Literal["generate", "classify", "perplexity"]


@dataclass(frozen=True)
class Example:
    prompt: str  # what the model sees ("" for perplexity)
    answer: str  # gold answer text (the label word for classification, the paragraph for perplexity)
    label: int | None = None  # index into TaskSpec.labels for classification


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Kind
    description: str
    parse: Callable[[dict], Example | None]  # one record -> Example; None = skip; ValueError = malformed
    fields: str  # the record fields a --data file must have
    max_new_tokens: int = 0  # generate: greedy tokens to produce
    labels: tuple[str, ...] = ()  # classify: candidate answers; the model is scored on " " + label
    max_answer_tokens: int | None = None  # drop items whose answer is longer (LASER's HotpotQA filter)
    builtin: str | None = None  # name of the built-in source (see sources.py), None = --data required
    notes: str = ""


# -- record parsers ------------------------------------------------------------------------------


def _text(record: dict, *names: str) -> str:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise ValueError(f"field '{name}' must be a string, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"field '{name}' is empty")
            return value.strip()
    raise ValueError(
        f"missing field '{names[0]}'"
        + (f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else "")
    )


def parse_wikidata(record: dict) -> Example | None:
    prompt = _text(record, "input")
    if "target" not in record:
        raise ValueError("missing field 'target'")
    target = record["target"]
    if isinstance(target, list):
        if not all(isinstance(t, str) for t in target):
            raise ValueError("field 'target' must be a string or a list of strings")
        if len(target) != 1:
            return None  # LASER keeps only items with exactly one target
        target = target[0]
    if not isinstance(target, str) or not target.strip():
        raise ValueError("field 'target' must be a non-empty string or a list of strings")
    return Example(prompt, target.strip())


FEVER_LABELS = ("true", "false")
_TRUE = {"true", "1", "supports", "supported"}
_FALSE = {"false", "0", "refutes", "refuted"}
_NEI = {"not enough info", "nei", "not_enough_info"}
_BB_CLAIM = re.compile(r"the following claim was made:\s*(.*?)\s*\nQ: Was this claim true or false\?", re.S)


def fever_prompt(claim: str) -> str:
    """LASER's FEVER prompt (a period is added only when the claim has no end punctuation)."""
    claim = claim.strip()
    sep = " " if claim.endswith((".", "?")) else ". "
    return f"Consider the following claim: {claim}{sep}Is this claim true or false. The claim is"


def _fever_label(value) -> int | None:
    key = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
    if key in _TRUE:
        return 0
    if key in _FALSE:
        return 1
    if key in _NEI:
        return None
    raise ValueError(f"field 'label' must be true/false, 1/0 or SUPPORTS/REFUTES, got {value!r}")


def parse_fever(record: dict) -> Example | None:
    if "target_scores" in record and "claim" not in record:  # BIG-bench fact_checker format
        raw = _text(record, "input")
        match = _BB_CLAIM.search(raw)
        claim = match.group(1) if match else raw
        scores = record["target_scores"]
        if (
            not isinstance(scores, dict)
            or set(scores) != {"true", "false"}
            or sorted(scores.values()) != [0, 1]
        ):
            raise ValueError('field \'target_scores\' must be {"true": 0|1, "false": 1|0}')
        label = 0 if scores["true"] == 1 else 1
    else:
        claim = _text(record, "claim")
        if "label" not in record:
            raise ValueError("missing field 'label'")
        label = _fever_label(record["label"])
        if label is None:
            return None
    return Example(fever_prompt(claim), FEVER_LABELS[label], label)


BIOS_PROFESSIONS = ("journalist", "poet", "composer", "model", "teacher", "architect", "painter", "professor")
# LabHC/bias_in_bios' integer ids of those eight professions (its 28-class `profession` field).
BIOS_LABHC_IDS = {
    11: "journalist",
    20: "poet",
    5: "composer",
    12: "model",
    26: "teacher",
    1: "architect",
    14: "painter",
    21: "professor",
}


def bios_prompt(text: str) -> str:
    text = text.strip()
    if not text.endswith((".", "?")):
        text += "."
    return (
        f"Consider the following text: {text} What is the profession of the person in this text? "
        "The profession of this person is"
    )


def parse_bios(record: dict) -> Example | None:
    text = _text(record, "hard_text", "text")
    if "profession" not in record:
        raise ValueError("missing field 'profession'")
    prof = record["profession"]
    if isinstance(prof, bool) or not isinstance(prof, (int, str)):
        raise ValueError("field 'profession' must be a profession name or a LabHC/bias_in_bios id")
    name = BIOS_LABHC_IDS.get(prof) if isinstance(prof, int) else prof.strip().lower()
    if name not in BIOS_PROFESSIONS:
        return None  # LASER keeps the 8 single-token professions only
    label = BIOS_PROFESSIONS.index(name)
    return Example(bios_prompt(text), name, label)


def hotpot_prompt(question: str) -> str:
    question = question.strip()
    if not question.endswith(("?", ".")):
        question += "?"
    return f"{question} The answer is"


def parse_hotpot(record: dict) -> Example | None:
    return Example(hotpot_prompt(_text(record, "question")), _text(record, "answer"))


def parse_paragraph(record: dict) -> Example | None:
    return Example("", _text(record, "text"))


EPISTEMIC_LABELS = ("entailment", "non-entailment")
# BIG-bench epistemic_reasoning's task.json: task_prefix, example_input_prefix and example_output_prefix.
EPISTEMIC_PREFIX = (
    "Identify the relation between the following premises and hypotheses, choosing from the options "
    "'entailment' or 'non-entailment'.\n"
)


def epistemic_prompt(pair: str) -> str:
    """BIG-bench's zero-shot prompt: task prefix, "\\n", the premise/hypothesis pair, "\\nRelation:".

    BIG-bench's output prefix is "\\nRelation: "; its trailing space is the one the classifier puts
    before each label (as LASER's `prompt + " " + choice`).
    """
    return f"{EPISTEMIC_PREFIX}\n{pair.strip()}\nRelation:"


def parse_epistemic(record: dict) -> Example | None:
    pair = _text(record, "input")
    if "target_scores" in record:
        scores = record["target_scores"]
        if (
            not isinstance(scores, dict)
            or set(scores) != set(EPISTEMIC_LABELS)
            or sorted(scores.values()) != [0, 1]
        ):
            raise ValueError('field \'target_scores\' must be {"entailment": 0|1, "non-entailment": 1|0}')
        label = 0 if scores["entailment"] == 1 else 1
    elif "label" in record:
        value = record["label"]
        name = value.strip().lower() if isinstance(value, str) else None
        if name not in EPISTEMIC_LABELS:
            raise ValueError(f"field 'label' must be 'entailment' or 'non-entailment', got {value!r}")
        label = EPISTEMIC_LABELS.index(name)
    else:
        raise ValueError("missing field 'target_scores' (or 'label')")
    return Example(epistemic_prompt(pair), EPISTEMIC_LABELS[label], label)


# -- the registry --------------------------------------------------------------------------------

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "wikidata_qa",
            "generate",
            "BIG-bench qa_wikidata, items with exactly one target",
            parse_wikidata,
            "input, target",
            max_new_tokens=10,
            builtin="bigbench:qa_wikidata",
            notes="prompt = raw input; correct iff the lower-cased target is in the decoded text",
        ),
        TaskSpec(
            "fever_bigbench",
            "classify",
            "BIG-bench fact_checker/fever (6,612 claims; not LASER's FEVER set)",
            parse_fever,
            "claim, label (or BIG-bench input, target_scores)",
            labels=FEVER_LABELS,
            builtin="bigbench:fever",
            notes="claim cut out of the BIG-bench input, put in LASER's FEVER prompt",
        ),
        TaskSpec(
            "fever",
            "classify",
            "LASER's FEVER: EleutherAI/fever v1.0 paper_dev + paper_test, conflicting claims removed",
            parse_fever,
            "claim, label",
            labels=FEVER_LABELS,
            builtin="hf:fever",
        ),
        TaskSpec(
            "hotpotqa",
            "generate",
            "HotpotQA fullwiki (LASER: train[:len(validation)] + validation)",
            parse_hotpot,
            "question, answer",
            max_new_tokens=15,
            max_answer_tokens=15,
            builtin="hf:hotpotqa",
            notes="answers of more than 15 tokens are dropped, as LASER does (counted by the evaluated "
            "tokenizer with its special tokens; LASER counted with Llama-2's, BOS included)",
        ),
        TaskSpec(
            "bios_profession",
            "classify",
            "LabHC/bias_in_bios dev, 8 single-token professions",
            parse_bios,
            "hard_text, profession",
            labels=BIOS_PROFESSIONS,
            builtin="hf:bios",
        ),
        TaskSpec(
            "epistemic_reasoning",
            "classify",
            "BIG-bench epistemic_reasoning (2,000 premise/hypothesis pairs, 741 entailments)",
            parse_epistemic,
            "input, target_scores (or label: entailment / non-entailment)",
            labels=EPISTEMIC_LABELS,
            builtin="bigbench:epistemic_reasoning",
            notes="prompt = BIG-bench's task prefix, the pair, 'Relation:'; a two-way choice by the "
            "labels' next-token log-probabilities after the prompt, as every classify task: labels of "
            "several tokens (both, for most tokenizers) are decided by their first tokens (' entail' vs "
            "' non' for SmolLM2), where LASER sums every label token's log-prob "
            "(bench/epistemic_full_label.py compares the two); loss = the gold label's mean token NLL",
        ),
        TaskSpec(
            "perplexity",
            "perplexity",
            "English Wikipedia paragraphs (BIG-bench squad_shifts new_wiki)",
            parse_paragraph,
            "text",
            builtin="bigbench:paragraphs",
            notes="token-weighted mean NLL; perplexity = exp(loss); paragraphs cut at 512 tokens",
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}' (choose from {', '.join(TASKS)})")
    return TASKS[name]
