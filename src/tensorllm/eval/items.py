"""Which items `evaluate` scores, and the checks that need no forward pass.

`task_items` is the task's records, LASER's answer-length filter (HotpotQA), then the split and its
first `limit` items; `preflight` raises every UserError `evaluate` would raise before it runs the
model, so a search can fail before it creates its store.
"""

from __future__ import annotations

import weakref

from tensorllm.base.errors import UserError
from tensorllm.eval.sources import load_task, select
from tensorllm.eval.tasks import Example, TaskSpec
from tensorllm.eval.tokens import label_tokens

ANSWER_MODES = ("faithful", "continuation")


def model_kind(model) -> str:
    """ "decoder" (causal LM head) or "encoder" (masked-LM head); anything else is a UserError."""
    name = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False):
        raise UserError(f"{name} is an encoder-decoder model; evaluation supports decoders and MLM encoders")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UserError(
            f"the model ({name}) has no language-model head (the checkpoint holds only the "
            "encoder / backbone, e.g. a sentence-embedding model): evaluation needs a causal LM or a "
            "*ForMaskedLM checkpoint"
        )
    if name.endswith("ForMaskedLM"):
        return "encoder"
    if name.endswith(("ForCausalLM", "LMHeadModel")) or getattr(model.config, "is_decoder", False):
        return "decoder"
    raise UserError(f"cannot tell whether {name} is a causal or a masked LM")


def check_answer_mode(answer_mode: str) -> None:
    if answer_mode not in ANSWER_MODES:
        raise UserError(f"unknown answer mode '{answer_mode}' (choose from {', '.join(ANSWER_MODES)})")


def check_model(model, spec: TaskSpec, kind: str | None = None) -> str:
    """The model's kind ("decoder" / "encoder") when it can be evaluated on `spec`; UserError otherwise."""
    kind = kind or model_kind(model)
    if kind not in ("decoder", "encoder"):
        raise UserError(f"unknown model kind '{kind}' (decoder or encoder)")
    if spec.kind == "perplexity" and kind == "encoder":
        raise UserError(
            "the perplexity task needs a decoder (causal) model; encoders have no next-token loss"
        )
    return kind


def preflight(model, tokenizer, spec: TaskSpec, split: str, limit: int | None, data=None) -> None:
    """The checks of `evaluate` that need no forward pass: a UserError here is one `evaluate` would raise."""
    check_model(model, spec)
    items, _, _ = task_items(tokenizer, spec, split, limit, data)
    if spec.kind == "classify":
        label_tokens(tokenizer, items[0].prompt, spec.labels)


# tokenizer -> {(id(dataset), max answer tokens): (dataset, kept examples)}: a search evaluates one
# task split once per configuration, and the answer-length filter need not re-tokenise every time
_FILTERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _short_answers(tokenizer, dataset, max_tokens: int) -> list[Example]:
    """The dataset's examples whose gold answer is at most `max_tokens` tokens (LASER's HotpotQA rule)."""
    try:
        memo = _FILTERED.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memo
        memo = {}
    hit = memo.get((id(dataset), max_tokens))
    if hit is not None and hit[0] is dataset:
        return hit[1]
    examples = dataset.examples
    lengths = [len(ids) for ids in tokenizer([e.answer for e in examples])["input_ids"]]
    kept = [e for e, n in zip(examples, lengths) if n <= max_tokens]
    memo[(id(dataset), max_tokens)] = (dataset, kept)
    return kept


def task_items(
    tokenizer, spec: TaskSpec, split: str, limit: int | None, data=None
) -> tuple[list[Example], int, str]:
    """(the examples `evaluate` scores, records dropped, source): the task's records, LASER's answer
    length filter (HotpotQA), then the split and its first `limit` items. Bad data is a UserError."""
    dataset = load_task(spec, data)
    examples, skipped = list(dataset.examples), dataset.skipped
    if spec.max_answer_tokens is not None:
        kept = _short_answers(tokenizer, dataset, spec.max_answer_tokens)
        skipped += len(examples) - len(kept)
        examples = kept
    return select(examples, split, limit, spec.name), skipped, dataset.source
