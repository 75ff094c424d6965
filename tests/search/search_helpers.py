"""Helpers for the search tests: a tiny random Llama (grouped-query, 3 layers) with a word-level
tokenizer, a small local WikidataQA-style JSONL task file, a SearchSpec factory and a store reader.

Everything is built from code, offline, in well under a second.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = (
    "paris rome berlin madrid london red blue green yellow black cat dog bird fish horse one two three "
    "four five apple pear plum grape lemon north south east west"
).split()
PROMPT_WORDS = "what is the capital color animal number fruit direction of item answer".split()
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + tuple(PROMPT_WORDS) + tuple(WORDS) + ("?", ":", "."))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def make_model_dir(path: Path, seed: int = 0, layers: int = 3) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the 0.02 init, so that Tucker/LASER visibly change outputs
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(10.0)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def write_task(path: Path, n: int = 40, seed: int = 0) -> Path:
    """WikidataQA-style records (`input`, `target`); about half the targets occur in the prompt, and every
    fourth target is two words (two tokens: their loss needs the teacher-forced pass, eval/scoring.py)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for k in range(n):
            a, b, target = rng.sample(WORDS, 3)
            if rng.random() < 0.5:
                a = target
            if k % 4 == 3:
                target = f"{target} {b}"
            kind = rng.choice(["capital", "color", "animal", "fruit"])
            f.write(
                json.dumps({"input": f"what is the {kind} of {a} {b} ? answer :", "target": target}) + "\n"
            )
    return path


def spec_for(tiny: dict, store: Path, **kw):
    from tensorllm.search import SearchSpec

    base = dict(
        model=tiny["model"],
        task="wikidata_qa",
        store=str(store),
        data=tiny["data"],
        method="tucker",
        ranks=((8, 4, 2), (0.5, 0.5, 1.0), "auto"),
        limit_val=8,
        limit_test=10,
        batch_size=16,
        device="cpu",
        threads=1,
        progress=False,
        exhaustive=True,  # these tests pin the exhaustive search; test_racing.py races
    )
    base.update(kw)
    options = {k: base.pop(k) for k in ("ranks", "rates", "variant", "rhos", "matrices") if k in base}
    return SearchSpec(**base, options={k: v for k, v in options.items() if v})


def store_numbers(store: Path) -> dict:
    """{(key, split): (accuracy, loss, n)} of a store, asserting each pair occurs exactly once."""
    from tensorllm.search import Store

    seen: dict = {}
    for line in Store(store).lines():
        pair = (line["key"], line["split"])
        assert pair not in seen, f"duplicate result {pair}"
        seen[pair] = (line["accuracy"], line["loss"], line["n"])
    return seen
