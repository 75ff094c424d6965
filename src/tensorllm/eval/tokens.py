"""Tokenisation helpers shared by the decoder and encoder paths, and the answer-match metric.

`encode` remembers the ids of every text it tokenised, per tokenizer (up to `MEMO_TEXTS` texts):
a search evaluates the same split once per configuration, and re-tokenising it every time took
16% of a GPU search's evaluation time. The ids of a text do not depend on the batch it came in
(no padding here), so the memo changes no number. `answer_spans` remembers where each (prompt,
answer)'s answer tokens lie the same way.
"""

from __future__ import annotations

import weakref

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from tensorllm.base.errors import UserError

MEMO_TEXTS = 400_000  # ~ every prompt and prompt + answer of the largest built-in task, twice
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SPANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # answer_spans' results, per tokenizer


def _memo_of(store: weakref.WeakKeyDictionary, tokenizer) -> dict | None:
    """The tokenizer's memo in `store`, or None for a tokenizer that cannot be weakly referenced."""
    try:
        return store.setdefault(tokenizer, {})
    except TypeError:
        return None


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with the tokenizer's own special tokens (BOS, [CLS] ... [SEP])."""
    if not texts:
        return []
    memo = _memo_of(_MEMO, tokenizer)
    if memo is None:
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    unique = dict.fromkeys(texts)
    missing = [t for t in unique if t not in memo]
    if missing and len(memo) + len(missing) > MEMO_TEXTS:
        memo.clear()
        missing = list(unique)
    if missing:
        for text, ids in zip(missing, tokenizer(missing, add_special_tokens=True)["input_ids"]):
            memo[text] = tuple(ids)
    return [list(memo[t]) for t in texts]  # fresh lists: callers may extend them


def decode_batch(tokenizer, seqs: list[list[int]]) -> list[str]:
    """`tokenizer.batch_decode(seqs, skip_special_tokens=True, clean_up_tokenization_spaces=False)`.

    For transformers' fast tokenizers that is the Rust tokenizer's own `decode_batch`, called directly:
    transformers' per-sequence type checks took 1.0 of 1.4 s for full WikidataQA's 37,866 sequences.
    A tokenizer class with its own `_decode` (or a slow one) goes through `batch_decode`."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if isinstance(backend, Tokenizer) and type(tokenizer)._decode is PreTrainedTokenizerFast._decode:
        lists = seqs if all(type(s) is list for s in seqs) else [list(s) for s in seqs]
        return backend.decode_batch(lists, skip_special_tokens=True)
    return tokenizer.batch_decode(seqs, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _added_suffix(tokenizer, text: str) -> int:
    """How many tokens the tokenizer appends after the text ([SEP], </s>, an EOS): 0 for most decoders."""
    full = tokenizer(text, add_special_tokens=True)["input_ids"]
    bare = tokenizer(text, add_special_tokens=False)["input_ids"]
    for offset in range(len(full) - len(bare) + 1):
        if full[offset : offset + len(bare)] == bare:
            return len(full) - offset - len(bare)
    return 0


def answer_spans(tokenizer, prompts: list[str], answers: list[str]) -> list[tuple[list[int], int, int]]:
    """Tokenise `prompt + " " + answer` (LASER's teacher-forcing text) and locate the answer.

    Returns, per example, (ids, start, end): ids[start:end] are the answer's tokens. The answer
    starts where the joint tokenisation first differs from the prompt's own (usually right after
    it); trailing special tokens such as BERT's [SEP] stay outside the span.
    """
    joint = encode(tokenizer, [f"{p} {a}" if p else a for p, a in zip(prompts, answers)])
    memo = _memo_of(_SPANS, tokenizer)  # (prompt, answer) -> (start, end), as `encode` memoises
    if memo is None:
        memo = {}
    if len(memo) > MEMO_TEXTS:
        memo.clear()
    missing = [i for i, key in enumerate(zip(prompts, answers)) if key not in memo]
    if missing:
        alone = encode(tokenizer, [prompts[i] for i in missing])
        tail = _added_suffix(tokenizer, next((p for p in prompts if p), "a")) if prompts else 0
        for i, p_ids in zip(missing, alone):
            ids, body = joint[i], p_ids[: len(p_ids) - tail]
            start = 0
            while start < min(len(body), len(ids)) and body[start] == ids[start]:
                start += 1
            end = len(ids) - tail
            if end <= start:
                raise UserError(f"cannot locate the answer tokens of example {i + 1} ({answers[i]!r})")
            memo[(prompts[i], answers[i])] = (start, end)
    return [(ids, *memo[key]) for ids, key in zip(joint, zip(prompts, answers))]


def label_tokens(tokenizer, prompt: str, labels: tuple[str, ...]) -> tuple[list[int], bool]:
    """First token of each label as it follows `prompt`, and whether every label is one token."""
    spans = answer_spans(tokenizer, [prompt] * len(labels), list(labels))
    first = [ids[start] for ids, start, _ in spans]
    if len(set(first)) != len(first):
        raise UserError(
            f"labels {', '.join(labels)} share a first token in this tokenizer; "
            "label-logit classification needs distinct first tokens"
        )
    return first, all(end - start == 1 for _, start, end in spans)


def answer_in_text(answer: str, text: str) -> bool:
    """LASER's generative accuracy: the stripped, lower-cased gold answer is a substring of the text."""
    return answer.strip().lower() in text.strip().lower()
