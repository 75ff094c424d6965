"""Tiny seeded models and real English text for the gqa tests."""

from __future__ import annotations

import ast
import codecs
import importlib
import importlib.util
import inspect
from pathlib import Path

import torch

from tensorllm.archs import spec_for
from tensorllm.attention import read_attention, write_attention
from tensorllm.methods.gqa import align as A
from tensorllm.methods.gqa.heads import permute_kv_heads, transform_heads


def english_text(min_chars: int = 60_000) -> str:
    """Docstrings of the Python standard library: real English prose, the same on every machine."""
    source = Path(importlib.util.find_spec("this").origin).read_text()  # the Zen of Python, ROT13 in `s`
    zen = next(
        n.value.value for n in ast.parse(source).body if isinstance(n, ast.Assign) and n.targets[0].id == "s"
    )
    docs = [codecs.decode(zen, "rot13")]
    for name in (
        "collections",
        "json",
        "argparse",
        "logging",
        "pathlib",
        "inspect",
        "typing",
        "functools",
        "itertools",
        "subprocess",
        "threading",
        "unittest",
        "email",
        "http.client",
        "urllib.request",
        "dataclasses",
        "decimal",
        "fractions",
        "random",
        "statistics",
        "textwrap",
        "zipfile",
        "tarfile",
        "shutil",
        "tempfile",
        "datetime",
        "calendar",
        "csv",
        "sqlite3",
        "socket",
        "ssl",
        "pickle",
        "heapq",
        "bisect",
        "contextlib",
        "abc",
        "enum",
        "string",
        "re",
        "difflib",
        "pprint",
    ):
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]:
            documented = inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj)
            doc = inspect.getdoc(obj) if documented else None
            if doc and len(doc) > 200 and doc not in docs:
                docs.append(doc)
        if sum(map(len, docs)) >= min_chars:
            break
    return "\n\n".join(docs)


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from tensorllm.models.aliases import alias_path

    return AutoTokenizer.from_pretrained(alias_path("smollm2-135m"))


def tiny_llama(
    heads: int = 4,
    kv_heads: int = 4,
    *,
    vocab: int = 256,
    hidden: int | None = None,
    head_dim: int = 16,
    layers: int = 2,
    bias: bool = False,
    family: str = "llama",
    seed: int = 0,
    dtype=torch.float64,
):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    hidden = hidden or heads * head_dim
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        initializer_range=0.2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    if family == "qwen2":  # q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(attention_bias=bias, **common))
    with torch.no_grad():  # non-zero biases so that bias handling is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    return model.to(dtype).eval()


def tiny_gptj(
    *,
    vocab: int = 256,
    hidden: int = 64,
    heads: int = 4,
    rotary_dim: int = 8,
    layers: int = 2,
    seed: int = 0,
    dtype=torch.float64,
):
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(seed)
    cfg = GPTJConfig(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        rotary_dim=rotary_dim,
        n_positions=512,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTJForCausalLM(cfg).to(dtype).eval()


def tiny_gpt2(*, vocab: int = 256, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg).eval()


def random_allowed(n: int, planes: A.Planes, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """n random transforms from the allowed group (per-plane rotations + orthogonal free block)."""
    M = torch.randn(n, planes.head_dim, planes.head_dim, generator=gen, dtype=dtype)
    return A.best_transform(M, planes)


def hide_structure(model, seed: int = 0) -> None:
    """Function-preserving shuffle of a multi-head model: permute heads, rotate each head's K/V."""
    arch = spec_for(model.config)
    gen = torch.Generator().manual_seed(seed)
    from tensorllm.methods.gqa.convert import key_planes

    for i in range(model.config.num_hidden_layers):
        w = read_attention(model, arch, i)
        w64 = w.with_(**{k: getattr(w, k).double() for k in ("q", "k", "v", "o")})
        planes = key_planes(model, arch, w.head_dim)
        tk = random_allowed(w.kv_heads, planes, gen)
        tv = random_allowed(w.kv_heads, A.Planes.orthogonal(w.head_dim), gen)
        order = torch.randperm(w.kv_heads, generator=gen).tolist()
        write_attention(model, arch, i, permute_kv_heads(transform_heads(w64, tk, tv), order))


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.double()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
