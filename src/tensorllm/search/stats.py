"""Paired statistics of two configurations scored on the same items: what a report's deltas mean.

- `mcnemar`: McNemar's exact test. Of the items exactly one of the two gets right, `only_a` go to
  a and `only_b` to b; under "no difference" each such item is a fair coin, so the two-sided p is
  twice the smaller binomial(only_a + only_b, 1/2) tail (capped at 1). Exact: no normal
  approximation, so it holds for the few discordant items of a small split too.
- `bootstrap`: the paired bootstrap 95% interval of the difference of means (percentile method,
  `RESAMPLES` resamples of the items with replacement, a fixed seed, so a report is reproducible).
  For 0/1 scores a resample of n items is a multinomial draw of how many of them are "only a",
  "only b" and "same", which gives exactly the item bootstrap's distribution without drawing
  n x RESAMPLES indices.
- `compare`: both, for one metric: `delta` (a minus b, points; nats/token for `loss`), `ci95`, `p`
  (None for `loss`, which is not 0/1: there `distinguishable` means the interval excludes 0) and
  `distinguishable` (p < ALPHA).

The items are the per-item scores a store line keeps (`items`, see tensorllm.eval.metrics).
"""

from __future__ import annotations

import numpy as np

from tensorllm.eval.metrics import LOWER_IS_BETTER, item_key

RESAMPLES = 2000
SEED = 0
ALPHA = 0.05  # "distinguishable" below this p (or a 95% interval that excludes 0)


def as_bits(flags: str) -> np.ndarray:
    return np.frombuffer(flags.encode("ascii"), dtype=np.uint8) == ord("1")


def binom_tail_two_sided(k: int, n: int) -> float:
    """Two-sided exact p of k successes in n fair coin flips: 2 * P(X <= min(k, n - k)), at most 1."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail, term = 0, 1  # term = C(n, i), exact integers
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, 2 * tail / 2**n)


def binom_upper_tail(k: int, n: int) -> float:
    """One-sided exact p: P(X >= k) for X ~ binomial(n, 1/2)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    tail, term = 0, 1
    for i in range(n - k + 1):  # P(X >= k) = P(X <= n - k) by symmetry
        tail += term
        term = term * (n - i) // (i + 1)
    return tail / 2**n


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(items only a gets right, items only b gets right, exact two-sided p)."""
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return only_a, only_b, binom_tail_two_sided(only_a, only_a + only_b)


def bootstrap_binary(only_a: int, only_b: int, n: int, scale: float = 100.0) -> tuple[float, float]:
    """95% interval of (mean a - mean b) * scale for 0/1 scores, from the discordant counts alone."""
    rng = np.random.default_rng(SEED)
    same = n - only_a - only_b
    draws = rng.multinomial(n, [only_a / n, only_b / n, same / n], size=RESAMPLES)  # (R, 3)
    deltas = (draws[:, 0] - draws[:, 1]) * (scale / n)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_mean(d: np.ndarray, chunk: int = 100, weights: np.ndarray | None = None) -> tuple[float, float]:
    """95% interval of the mean of the paired differences `d` (any real scores); with `weights`, of
    the weighted mean (perplexity: paragraphs weighted by their tokens, as its loss is)."""
    rng = np.random.default_rng(SEED)
    n, means = len(d), []
    w = np.ones(n) if weights is None else weights
    for start in range(0, RESAMPLES, chunk):
        idx = rng.integers(0, n, size=(min(chunk, RESAMPLES - start), n))  # (chunk, n)
        means.append((d[idx] * w[idx]).sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-12))
    lo, hi = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(lo), float(hi)


def item_vector(line: dict | None, metric: str):
    """The per-item scores of a store line for `metric` (0/1 array or NLL array), None if not kept."""
    items = (line or {}).get("items")
    if not items:
        return None
    ev = line.get("eval") or {}
    kind = "generate" if ev.get("metric") in ("generate-substring", "mlm-fill") else "other"
    key = item_key(metric, ev.get("answer_mode"), kind)
    v = items.get(key)
    if v is None:
        return None
    return as_bits(v) if isinstance(v, str) else np.asarray(v, dtype=np.float64)


def compare(a_line: dict | None, b_line: dict | None, metric: str) -> dict | None:
    """a minus b on `metric` over the same items; None when either lacks per-item scores."""
    a, b = item_vector(a_line, metric), item_vector(b_line, metric)
    if a is None or b is None or len(a) != len(b) or not len(a):
        return None
    n = len(a)
    if a.dtype == bool:
        only_a, only_b, p = mcnemar(a, b)
        lo, hi = bootstrap_binary(only_a, only_b, n)
        delta = 100.0 * (only_a - only_b) / n
        return {
            "metric": metric,
            "n": n,
            "delta": delta,
            "ci95": [lo, hi],
            "p": p,
            "only_a": only_a,
            "only_b": only_b,
            "distinguishable": p < ALPHA,
        }
    d = a - b
    tokens = (a_line.get("items") or {}).get("tokens")
    w = np.asarray(tokens, dtype=np.float64) if tokens is not None and len(tokens) == n else None
    lo, hi = bootstrap_mean(d, weights=w)
    return {
        "metric": metric,
        "n": n,
        "delta": float(d.mean()) if w is None else float((d * w).sum() / max(w.sum(), 1e-12)),
        "ci95": [lo, hi],
        "p": None,
        "only_a": None,
        "only_b": None,
        "distinguishable": bool(lo > 0 or hi < 0),
    }


def better(cmp: dict) -> bool:
    """Whether a is the better one of a compare() result (lower loss, higher anything else)."""
    return cmp["delta"] < 0 if cmp["metric"] in LOWER_IS_BETTER else cmp["delta"] > 0
