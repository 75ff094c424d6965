"""`evaluate(model, tokenizer, task, split=...)`: LASER's accuracy and loss for one task split.

Accuracy (percent):
- generative tasks: greedy decoding (10 / 15 new tokens, EOS forbidden at the first step as in
  LASER's `min_new_tokens=1`); correct iff the lower-cased gold answer is a substring of the decoded
  text. `answer_mode="faithful"` decodes prompt + continuation as LASER's code does (an answer that
  appears in the question counts); `"continuation"` decodes the new tokens only. Encoders fill 5
  appended masks and decode only those (`answer_mode` reported as "masks").
- classification tasks: the candidate labels' logits at the last position (encoders: at one
  appended mask); the highest wins.
Loss: mean over examples of the per-token NLL of the gold answer given the prompt, teacher-forced
on `prompt + " " + answer` (encoders: the answer's tokens masked). Where that answer is one token
after the prompt's own, the same NLL is read from the generation's first-step logits
(`decoder.generate_and_score`), so only longer answers get a pass of their own; in bfloat16 the two
may differ in the last bits (the batches have other shapes). Perplexity task: token-weighted mean NLL
over the paragraphs, perplexity = exp(loss).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from tensorllm.base.errors import UserError
from tensorllm.base.heap import frozen_heap
from tensorllm.eval import metrics, scoring
from tensorllm.eval.items import (  # noqa: F401  (re-exported: eval/__init__, cli, search)
    ANSWER_MODES,
    _short_answers,
    check_answer_mode,
    check_model,
    model_kind,
    preflight,
    task_items,
)
from tensorllm.eval.reference import ReferencePath
from tensorllm.eval.scoring import SCORERS, Run, check_encoder_length
from tensorllm.eval.tasks import TaskSpec, get_task


@dataclass
class EvalResult:
    task: str
    split: str
    n: int
    accuracy: float | None  # percent; None for the perplexity task
    loss: float | None
    perplexity: float | None = None  # perplexity task only
    metric: str = (
        ""  # how accuracy was computed: generate-substring, label-logits, mlm-fill, mlm-label, token-nll
    )
    answer_mode: str | None = None  # generative tasks: faithful, continuation, or masks (encoders)
    model_kind: str = "decoder"
    seconds: float = 0.0
    batch_size: int = 0
    source: str = ""
    skipped: int = 0  # records of the source that the task's rules dropped
    examples: list[dict] | None = None  # per-example details when keep_examples=True
    seconds_by_phase: dict[str, float] | None = None  # decoder tasks: tokenise, generate, judge, score, loss
    metrics: dict[str, float] | None = None  # every metric of metrics.py (percent; loss in nats/token)
    items: dict | None = field(default=None, repr=False)  # per-item scores (metrics.py); not in to_dict

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("items")
        return out


def evaluate(
    model,
    tokenizer,
    task: str | TaskSpec,
    split: str = "val",
    limit: int | None = None,
    *,
    batch_size: int = 256,
    answer_mode: str = "faithful",
    data=None,
    kind: str | None = None,
    max_batch_tokens: int = 65536,
    keep_examples: bool = False,
    progress: bool = True,
    span: tuple[int, int] | None = None,
    reference: ReferencePath | None = None,
) -> EvalResult:
    """Evaluate an in-memory model on one task split (see the module docstring for the metrics).

    `span=(start, end)` scores only those items of the split (after `limit`): a racing search
    grows a configuration's slice of validation items without scoring any item twice.
    `reference`: a search's shortcut for decoder models' gold-answer loss (eval/reference.py): capture
    the unedited model's path (layer None), or start at block `layer` of a model edited from there on."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    check_answer_mode(answer_mode)
    if batch_size <= 0 or max_batch_tokens <= 0:
        raise UserError("batch size and max batch tokens must be positive")
    kind = check_model(model, spec, kind)
    start = time.perf_counter()
    items, skipped, source = task_items(tokenizer, spec, split, limit, data)
    if span is not None:
        if not 0 <= span[0] < span[1] <= len(items):
            raise UserError(f"items {span[0]}..{span[1]} are outside the {split} split ({len(items)} items)")
        items = items[span[0] : span[1]]
    run = Run(batch_size, max_batch_tokens, progress, answer_mode, reference=reference)
    was_training = model.training
    model.eval()
    try:
        if kind == "encoder":
            check_encoder_length(model, tokenizer, items)
        with frozen_heap():  # no full collection walks the model's objects mid-run (base/heap.py)
            scored = SCORERS[(kind, spec.kind)](model, tokenizer, spec, items, run)
    finally:
        model.train(was_training)
    metric, mode, correct, nll, predictions, extra = scored
    if spec.kind == "perplexity":
        loss = sum(s for s, _ in nll) / max(1, sum(c for _, c in nll))
        accuracy, ppl = None, math.exp(loss)
    else:
        loss = sum(s / c for s, c in nll) / len(nll)
        accuracy, ppl = 100.0 * sum(correct) / len(correct), None
    per_item = metrics.per_item(spec.kind, correct, nll, extra)
    details = None
    if keep_examples:
        details = [
            {
                "prompt": e.prompt,
                "answer": e.answer,
                "prediction": predictions[i] if predictions else None,
                "correct": correct[i] if correct else None,
                "nll_sum": nll[i][0],
                "tokens": nll[i][1],
            }
            for i, e in enumerate(items)
        ]
    return EvalResult(
        spec.name,
        split,
        len(items),
        accuracy,
        loss,
        ppl,
        metric,
        mode,
        kind,
        time.perf_counter() - start,
        batch_size,
        source,
        skipped,
        details,
        run.phases or None,
        {**metrics.aggregate(per_item), "loss": loss},
        per_item,
    )


def capture_reference(
    model,
    tokenizer,
    task: str | TaskSpec,
    reference: ReferencePath,
    split: str = "val",
    limit: int | None = None,
    *,
    span: tuple[int, int],
    batch_size: int = 256,
    max_batch_tokens: int = 65536,
    data=None,
) -> None:
    """Store the unedited model's path over items `span` of a split (eval/reference.py): its loss pass
    only, for a search resumed from a store that already holds the baseline's scores."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    items = task_items(tokenizer, spec, split, limit, data)[0][span[0] : span[1]]
    scoring.capture_reference(
        model, tokenizer, items, Run(batch_size, max_batch_tokens, False, "faithful", reference=reference)
    )
