"""The per-item scores `evaluate` keeps, the metrics made of them, and their names.

Generative tasks score every item four ways (kept per item in `EvalResult.items`, averaged in
`EvalResult.metrics`):
- `faithful`: LASER's containment, the lower-cased gold answer is a substring of the decoded
  prompt + continuation (an answer that appears in the question counts);
- `continuation`: the same containment in the decoded new tokens only;
- `exact`: exact match of the first generated answer span: the continuation up to its first line
  break or clause punctuation (`.`, `,`, `;`, `!`, `?` followed by a space or the end), compared with
  the gold answer after SQuAD's normalisation (lower case, punctuation and the articles a/an/the
  removed, whitespace collapsed). "Paris, France" -> "paris" matches "Paris"; "the city of Paris"
  does not. Strict by design: it counts answers, not mentions;
- `nll`: the gold answer's mean per-token negative log-likelihood (the loss).
Classification tasks keep `correct` (the label with the highest logit is the gold one) and `nll`;
the perplexity task keeps `nll` and `tokens` per paragraph. Encoders fill masks instead of
generating, so their `continuation` and `exact` read the filled masks and they have no `faithful`.

`accuracy` is always the task's own accuracy: `faithful` or `continuation` by the answer mode
(encoders: `continuation`, i.e. the masks), `correct` for classification.
"""

from __future__ import annotations

import functools
import re
import string

# what `--select-by` accepts: every metric a store line can carry (higher is better, but `loss`)
SELECT_BY = ("accuracy", "faithful", "continuation", "exact", "loss")
LOWER_IS_BETTER = frozenset({"loss"})

_SPAN_END = re.compile(r"\n|[.,;!?](?=\s|$)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans(string.punctuation, " " * len(string.punctuation))


def first_span(text: str) -> str:
    """The continuation's first answer span: up to the first line break or clause punctuation."""
    text = text.strip()
    m = _SPAN_END.search(text)
    return text[: m.start()] if m else text


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


@functools.lru_cache(maxsize=1 << 18)
def _normalized_gold(answer: str) -> str:
    """normalize(answer), remembered: a search judges the same gold answers once per configuration."""
    return normalize(answer)


def exact_first_span(answer: str, continuation: str) -> bool:
    gold = _normalized_gold(answer)
    return bool(gold) and normalize(first_span(continuation)) == gold


def bits(flags) -> str:
    """Per-item booleans as a '0'/'1' string (compact in a JSON line, readable with jq)."""
    return "".join("1" if f else "0" for f in flags)


def item_key(metric: str, answer_mode: str | None, kind: str) -> str:
    """Which per-item vector a metric reads: `accuracy` resolves to the task's own."""
    if metric != "accuracy":
        return "nll" if metric == "loss" else metric
    if kind != "generate":
        return "correct"
    return "faithful" if answer_mode == "faithful" else "continuation"


def per_item(task_kind: str, correct, nll, extra: dict) -> dict:
    """`EvalResult.items`: the boolean scores as bit strings, the gold answer's mean NLL per item."""
    out = {k: bits(v) for k, v in extra.items()}
    if task_kind == "classify":
        out["correct"] = bits(correct)
    out["nll"] = [s / c if c else 0.0 for s, c in nll]
    if task_kind == "perplexity":
        out["tokens"] = [c for _, c in nll]
    return out


def percent(flags) -> float | None:
    return 100.0 * sum(flags) / len(flags) if flags else None


def aggregate(items: dict) -> dict:
    """`EvalResult.metrics` of the per-item scores: percents of the boolean ones, mean nll as `loss`."""
    out = {k: percent([c == "1" for c in v]) for k, v in items.items() if isinstance(v, str)}
    nll = items.get("nll")
    if nll:
        tokens = items.get("tokens")
        out["loss"] = (
            sum(s * c for s, c in zip(nll, tokens)) / max(1, sum(tokens)) if tokens else sum(nll) / len(nll)
        )
    return out
