"""`tokens.decode_batch` (the Rust tokenizer's own batch decode) gives `batch_decode`'s texts exactly:
real tokenizers (SmolLM2's byte-level BPE, MiniLM's WordPiece) and the tiny test ones, on ids that
include special tokens (skipped), byte fragments of multi-byte characters and repeated spaces."""

from __future__ import annotations

import random

import pytest

import tensorllm
from tensorllm.eval.tokens import decode_batch


def _seqs(tokenizer, n: int = 300, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    specials = list(tokenizer.all_special_ids)
    texts = ["Paris is the capital of France.", "  naïve café — 東京  ", "e = mc², ok?", ""]
    real = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    vocab = len(tokenizer)
    seqs = [r + [rng.randrange(vocab) for _ in range(rng.randint(0, 12))] for r in real * (n // len(real))]
    for s in seqs[::3]:
        s.insert(rng.randint(0, len(s)), rng.choice(specials))
    return seqs


def _same(tokenizer) -> None:
    seqs = _seqs(tokenizer)
    want = tokenizer.batch_decode(seqs, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert decode_batch(tokenizer, seqs) == want
    assert decode_batch(tokenizer, [tuple(s) for s in seqs]) == want  # the encode memo's tuples


@pytest.mark.real
def test_smollm2_tokenizer(smollm2):
    _same(smollm2[1])  # tests/eval: (model, tokenizer)


@pytest.mark.real
def test_minilm_tokenizer(real_unavailable):
    try:
        loaded = tensorllm.load_model("minilm-l6", dtype="float32", device="cpu")
    except tensorllm.UserError as exc:
        real_unavailable(f"minilm-l6 unavailable: {exc}")
    _same(loaded.tokenizer)


def test_tiny_tokenizers(tiny_llama, tiny_bert):
    _same(tiny_llama[1])
    _same(tiny_bert[1])


def test_a_tokenizer_with_its_own_decode_goes_through_batch_decode(tiny_llama):
    tok = tiny_llama[1]

    class Shouting(type(tok)):
        def _decode(self, token_ids, **kwargs):
            return super()._decode(token_ids, **kwargs).upper()

    loud = Shouting(tokenizer_object=tok.backend_tokenizer)
    seqs = _seqs(tok, n=8)
    assert decode_batch(loud, seqs) == [t.upper() for t in decode_batch(tok, seqs)]
