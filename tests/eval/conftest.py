"""Fixtures for the evaluation tests.

- `bigbench`: the real BIG-bench fetch (PyPI sdist, streamed), done once per session into a
  temporary cache and pointed at by every test that asks for it.
- `smollm2`: the real SmolLM2-135M (float32, CPU), loaded once.
- tiny random models (Llama with a BOS-adding word tokenizer, GPT-2 with learned absolute
  positions, BERT masked-LM with a WordPiece tokenizer), built from code in well under a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from eval_helpers import WORDS, word_tokenizer  # tests/eval/eval_helpers.py

from tensorllm.base.errors import UserError


@pytest.fixture(scope="session")
def bigbench_dir(tmp_path_factory, real_unavailable) -> Path:
    from tensorllm.data import bigbench

    root = tmp_path_factory.mktemp("tllm-cache")
    old = os.environ.get("TENSORLLM_CACHE")
    os.environ["TENSORLLM_CACHE"] = str(root)
    try:
        res = bigbench.fetch_bigbench(progress=False)
    except UserError as exc:
        if "cannot reach the package index" in str(exc) or "download of" in str(exc):
            real_unavailable(f"BIG-bench sdist unreachable (no network?): {exc}")
        raise
    finally:
        if old is None:
            os.environ.pop("TENSORLLM_CACHE", None)
        else:
            os.environ["TENSORLLM_CACHE"] = old
    return res.directory


@pytest.fixture
def bigbench(bigbench_dir, monkeypatch) -> Path:
    from tensorllm.data import bigbench as bb
    from tensorllm.eval import sources

    monkeypatch.setattr(bb, "data_dir", lambda: bigbench_dir)
    sources._load_builtin.cache_clear()
    yield bigbench_dir
    sources._load_builtin.cache_clear()


@pytest.fixture(scope="session")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tensorllm.models.aliases import alias_path

    path = alias_path("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(bos=True)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy choices are not near-ties
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8.0)
    return model, tok


@pytest.fixture(scope="session")
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = word_tokenizer(bos=False)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(1)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8.0)
    return model, tok


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    vocab = tmp_path_factory.mktemp("bert") / "vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["?", ":", ".", ","]) + "\n"
    )
    tok = BertTokenizer(vocab=str(vocab))  # transformers 5: WordPiece from a vocab file (`vocab=`)
    assert tok.unk_token_id not in tok("paris is the capital of france").input_ids
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    torch.manual_seed(2)
    model = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8.0)
    return model, tok


@pytest.fixture
def jsonl(tmp_path):
    """jsonl(records, name="data.jsonl") -> path of a JSON Lines file holding them."""

    def write(records: list[dict], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path

    return write
