"""How each kind of model scores each kind of task: the routines `evaluate` (eval/evaluate.py) calls.

Each routine takes (model, tokenizer, spec, items, run) and returns
(metric, answer_mode, correct per item or None, (nll sum, tokens) per item, predictions or None,
extra per-item judgements for metrics.py). `SCORERS[(model kind, task kind)]` picks one.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from tensorllm.base.errors import UserError
from tensorllm.eval import decoder, encoder, metrics
from tensorllm.eval.reference import ReferencePath
from tensorllm.eval.tasks import Example
from tensorllm.eval.tokens import answer_in_text, answer_spans, decode_batch, encode, label_tokens

PERPLEXITY_MAX_TOKENS = 512


@dataclass
class Run:
    batch_size: int
    max_batch_tokens: int
    progress: bool
    answer_mode: str
    phases: dict[str, float] = field(default_factory=dict)
    reference: ReferencePath | None = None  # a search's val items: the unedited model's path (reference.py)

    @contextmanager
    def timed(self, phase: str):
        """Add the block's wall time to `phases[phase]` (the model's outputs come back to the host
        inside each block, so the device's work is in it)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = round(self.phases.get(phase, 0.0) + time.perf_counter() - t0, 4)


# -- decoder models ------------------------------------------------------------------------------


def _decoder_ids(model, tokenizer) -> tuple[list[int], int]:
    """EOS ids as `generate` would use them (generation config first), and a pad id."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    return eos_ids, pad  # pad positions are masked out, so any valid id works


def _answer_spans(tokenizer, items: list[Example], run: Run):
    with run.timed("tokenise"):
        return answer_spans(tokenizer, [e.prompt for e in items], [e.answer for e in items])


def _teacher_forced(model, spans, rows: list[int], n: int, pad: int, run: Run) -> list[tuple[float, int]]:
    """The gold-answer loss pass over items `rows` of the n evaluated (spans: `answer_spans` of all n),
    one (NLL sum, tokens) per row; the search's reference path (eval/reference.py) around it."""
    with run.timed("loss"):
        return decoder.sequence_nll(
            model,
            [spans[i][0][: spans[i][2]] for i in rows],
            [spans[i][2] - spans[i][1] for i in rows],
            pad_id=pad,
            batch_size=run.batch_size,
            max_batch_tokens=run.max_batch_tokens,
            progress=run.progress,
            around=run.reference and run.reference.around(n, rows),
        )


def one_token_answers(prompts: list[list[int]], spans) -> list[int | None]:
    """Per item, its gold answer's token when the answer is one token that follows the prompt's own
    tokens in LASER's teacher-forcing text (`answer_spans`), else None. Its teacher-forced loss is then
    -log p(token | prompt): the generation's first-step logits give it without a pass of its own."""
    return [
        ids[start] if end - start == 1 and start == len(p) and ids[:start] == p else None
        for p, (ids, start, end) in zip(prompts, spans)
    ]


def _decoder_generate(model, tokenizer, spec, items, run):
    eos_ids, pad = _decoder_ids(model, tokenizer)
    with run.timed("tokenise"):
        prompts = encode(tokenizer, [e.prompt for e in items])
    spans = _answer_spans(tokenizer, items, run)
    first = one_token_answers(prompts, spans)
    with run.timed("generate"):
        conts, first_nll = decoder.generate_and_score(
            model,
            prompts,
            first,
            max_new_tokens=spec.max_new_tokens,
            eos_ids=eos_ids,
            pad_id=pad,
            min_new_tokens=1,
            batch_size=run.batch_size,
            max_batch_tokens=run.max_batch_tokens,
            progress=run.progress,
        )
    with run.timed("judge"):
        new_text = decode_batch(tokenizer, conts)
        whole = decode_batch(tokenizer, [p + c for p, c in zip(prompts, conts)])
        extra = {
            "faithful": [answer_in_text(e.answer, t) for e, t in zip(items, whole)],
            "continuation": [answer_in_text(e.answer, t) for e, t in zip(items, new_text)],
            "exact": [metrics.exact_first_span(e.answer, t) for e, t in zip(items, new_text)],
        }
        correct = extra[run.answer_mode]
    nll = [(v, 1) if v is not None else None for v in first_nll]
    rest = [i for i, v in enumerate(first_nll) if v is None]  # answers of more tokens: a pass of their own
    for i, value in zip(rest, _teacher_forced(model, spans, rest, len(items), pad, run)):  # (rest may be
        nll[i] = value  # empty: the call still marks a search's reference as covering these items)
    return "generate-substring", run.answer_mode, correct, nll, new_text, extra


def capture_reference(model, tokenizer, items, run: Run) -> None:
    """Only the teacher-forced loss pass, on the unedited model, to fill `run.reference` (capture): over
    the items whose loss `_decoder_generate` takes from that pass (not the one-token answers)."""
    _, pad = _decoder_ids(model, tokenizer)
    with run.timed("tokenise"):
        prompts = encode(tokenizer, [e.prompt for e in items])
    spans = _answer_spans(tokenizer, items, run)
    rest = [i for i, t in enumerate(one_token_answers(prompts, spans)) if t is None]
    _teacher_forced(model, spans, rest, len(items), pad, run)


def _decoder_classify(model, tokenizer, spec, items, run):
    _, pad = _decoder_ids(model, tokenizer)
    with run.timed("tokenise"):
        label_ids, single = label_tokens(tokenizer, items[0].prompt, spec.labels)
        prompts = encode(tokenizer, [e.prompt for e in items])
    with run.timed("score"):
        lp = decoder.last_token_logprobs(
            model,
            prompts,
            label_ids,
            pad_id=pad,
            batch_size=run.batch_size,
            max_batch_tokens=run.max_batch_tokens,
            progress=run.progress,
        )  # (N, L)
    every = list(range(len(items)))
    return _classified(
        spec,
        items,
        lp,
        single,
        lambda: _teacher_forced(model, _answer_spans(tokenizer, items, run), every, len(items), pad, run),
        "label-logits",
    )


def _classified(spec, items, lp, single, multi_token_loss, metric):
    """Label predictions from (N, L) label log-probabilities; the loss is the label's own log-probability
    when every label is one token, else `multi_token_loss()` (a teacher-forced pass)."""
    pred = lp.argmax(dim=1).tolist()
    correct = [p == e.label for p, e in zip(pred, items)]
    if single:  # the label is one token: its teacher-forced NLL is this very log-probability
        nll = [(-float(lp[i, e.label]), 1) for i, e in enumerate(items)]
    else:
        nll = multi_token_loss()
    return metric, None, correct, nll, [spec.labels[p] for p in pred], {}


def _decoder_perplexity(model, tokenizer, spec, items, run):
    _, pad = _decoder_ids(model, tokenizer)
    with run.timed("tokenise"):
        seqs = [ids[:PERPLEXITY_MAX_TOKENS] for ids in encode(tokenizer, [e.answer for e in items])]
    scorable = [i for i, s in enumerate(seqs) if len(s) >= 2]
    nll = [(0.0, 0)] * len(seqs)
    with run.timed("loss"):
        got = decoder.sequence_nll(
            model,
            [seqs[i] for i in scorable],
            [len(seqs[i]) - 1 for i in scorable],
            pad_id=pad,
            batch_size=run.batch_size,
            max_batch_tokens=run.max_batch_tokens,
            progress=run.progress,
        )
    for i, r in zip(scorable, got):
        nll[i] = r
    return "token-nll", None, None, nll, None, {}


# -- encoder (masked-LM) models ------------------------------------------------------------------


def _mask_id(tokenizer) -> int:
    if tokenizer.mask_token_id is None:
        raise UserError("the tokenizer has no mask token; masked-LM evaluation needs one")
    return tokenizer.mask_token_id


def check_encoder_length(model, tokenizer, items) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(ids) for ids in encode(tokenizer, [f"{e.prompt} {e.answer}" for e in items]))
    if limit is not None and longest + encoder.ACCURACY_MASKS > limit:
        raise UserError(f"an example is {longest} tokens long; this encoder takes at most {limit}")


def _masked_gold_loss(model, tokenizer, items, run):
    mask = _mask_id(tokenizer)
    spans = answer_spans(tokenizer, [e.prompt for e in items], [e.answer for e in items])
    seqs = [ids[:s] + [mask] * (end - s) + ids[end:] for ids, s, end in spans]
    return encoder.mlm_gold_nll(
        model,
        seqs,
        [ids[s:end] for ids, s, end in spans],
        mask_id=mask,
        pad_id=tokenizer.pad_token_id or 0,
        batch_size=run.batch_size,
        max_batch_tokens=min(run.max_batch_tokens, 16384),
        progress=run.progress,
    )


def _encoder_generate(model, tokenizer, spec, items, run):
    mask = _mask_id(tokenizer)
    masks = " ".join([tokenizer.mask_token] * encoder.ACCURACY_MASKS)
    seqs = encode(tokenizer, [f"{e.prompt} {masks}" for e in items])
    filled = encoder.mlm_fill(
        model,
        seqs,
        mask_id=mask,
        pad_id=tokenizer.pad_token_id or 0,
        batch_size=run.batch_size,
        max_batch_tokens=min(run.max_batch_tokens, 16384),
        progress=run.progress,
    )
    text = decode_batch(tokenizer, filled)
    correct = [answer_in_text(e.answer, t) for e, t in zip(items, text)]
    extra = {
        "continuation": correct,
        "exact": [metrics.exact_first_span(e.answer, t) for e, t in zip(items, text)],
    }
    return "mlm-fill", "masks", correct, _masked_gold_loss(model, tokenizer, items, run), text, extra


def _encoder_classify(model, tokenizer, spec, items, run):
    mask = _mask_id(tokenizer)
    label_ids, single = label_tokens(tokenizer, items[0].prompt, spec.labels)
    seqs = encode(tokenizer, [f"{e.prompt} {tokenizer.mask_token}" for e in items])
    lp = encoder.mlm_label_logprobs(
        model,
        seqs,
        label_ids,
        mask_id=mask,
        pad_id=tokenizer.pad_token_id or 0,
        batch_size=run.batch_size,
        max_batch_tokens=min(run.max_batch_tokens, 16384),
        progress=run.progress,
    )
    return _classified(
        spec, items, lp, single, lambda: _masked_gold_loss(model, tokenizer, items, run), "mlm-label"
    )


SCORERS = {
    ("decoder", "generate"): _decoder_generate,
    ("decoder", "classify"): _decoder_classify,
    ("decoder", "perplexity"): _decoder_perplexity,
    ("encoder", "generate"): _encoder_generate,
    ("encoder", "classify"): _encoder_classify,
}
