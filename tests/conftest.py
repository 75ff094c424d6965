"""Shared test fixtures: tiny random models of every supported architecture, the real SmolLM2
loaded once per session, and runners for the `tensorllm` command line.

Fixtures return small helper objects instead of tests importing from this file, so that every
test module (including those in sub-packages such as tests/methods) sees the same helpers.
"""

from __future__ import annotations

import os

# Before transformers is imported anywhere: no hub access, no chatter on stderr.
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import tiny_archs  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

HIDDEN, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 4, 2, 2, 128
REAL_PROMPT = "The capital of France is Paris, and the capital of Italy is"

# model_type -> (config factory, Auto class that holds the LM head). GQA where the family has it.
_SIZES = dict(
    vocab_size=VOCAB,
    num_hidden_layers=LAYERS,
    hidden_size=HIDDEN,
    num_attention_heads=HEADS,
    intermediate_size=2 * HIDDEN,
)
_GPT_SIZES = dict(
    vocab_size=VOCAB,
    n_layer=LAYERS,
    n_embd=HIDDEN,
    n_head=HEADS,
    n_positions=64,
    bos_token_id=2,
    eos_token_id=2,
)
_TOKENS = dict(bos_token_id=2, eos_token_id=2, pad_token_id=1)
_GQA = dict(num_key_value_heads=KV_HEADS)


def _config(cls_name: str, *parts: dict):
    """A config factory whose keyword arguments override the tiny defaults."""
    defaults = {k: v for part in parts for k, v in part.items()}
    return lambda **kw: getattr(transformers, cls_name)(**{**defaults, **kw})


_TINY = {
    "llama": (_config("LlamaConfig", _SIZES, _GQA, _TOKENS), "AutoModelForCausalLM"),
    "mistral": (_config("MistralConfig", _SIZES, _GQA, _TOKENS), "AutoModelForCausalLM"),
    "qwen2": (_config("Qwen2Config", _SIZES, _GQA, _TOKENS), "AutoModelForCausalLM"),
    # Gemma: head_dim 32 while hidden / heads = 16, as in Gemma-2B (256 vs 2048 / 8).
    "gemma": (_config("GemmaConfig", _SIZES, _GQA, _TOKENS, dict(head_dim=32)), "AutoModelForCausalLM"),
    # Phi-3: one fused qkv_proj, [Q; K; V] concatenated, with GQA.
    "phi3": (_config("Phi3Config", _SIZES, _GQA, _TOKENS), "AutoModelForCausalLM"),
    # GPT-2: Conv1D (in, out) fused c_attn, biases everywhere.
    "gpt2": (_config("GPT2Config", _GPT_SIZES), "AutoModelForCausalLM"),
    # GPT-J: RoPE on the first 8 of 16 dims of each head, pairs (2i, 2i+1).
    "gptj": (_config("GPTJConfig", _GPT_SIZES, dict(rotary_dim=8)), "AutoModelForCausalLM"),
    # GPT-NeoX: fused per-head interleaved qkv, RoPE on a quarter of each head.
    "gpt_neox": (
        _config("GPTNeoXConfig", _SIZES, _TOKENS, dict(rotary_pct=0.25, max_position_embeddings=64)),
        "AutoModelForCausalLM",
    ),
    "bert": (
        _config("BertConfig", _SIZES, dict(max_position_embeddings=64, pad_token_id=1)),
        "AutoModelForMaskedLM",
    ),
    "roberta": (
        _config("RobertaConfig", _SIZES, _TOKENS, dict(max_position_embeddings=66)),
        "AutoModelForMaskedLM",
    ),
    "xlm-roberta": (
        _config("XLMRobertaConfig", _SIZES, _TOKENS, dict(max_position_embeddings=66)),
        "AutoModelForMaskedLM",
    ),
}

_TINY.update(tiny_archs.TINY)  # the 2025-2026 families (tests/tiny_archs.py)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with seeded noise: biases and norms become non-trivial too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
            if p.ndim == 1 and name.endswith("weight"):  # LayerNorm / RMSNorm scales
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


class Tiny:
    """Tiny random models (hidden 64, 4 heads, 2 layers, float32) of every supported model_type."""

    model_types = tuple(_TINY)

    def config(self, model_type: str, **overrides):
        return _TINY[model_type][0](**overrides)

    def auto_class(self, model_type: str):
        return getattr(transformers, _TINY[model_type][1])

    def model(self, model_type: str, *, seed: int = 0, **overrides) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = self.auto_class(model_type).from_config(
            self.config(model_type, **overrides), dtype=torch.float32
        )
        randomize(model, seed)
        return model.eval()

    def inputs(self, batch: int = 2, length: int = 10, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(3, VOCAB, (batch, length), generator=gen)  # avoids pad / bos ids

    @staticmethod
    def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).logits

    def tokenizer(self):
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
        )

    def save(self, path: Path, model_type: str = "llama", *, seed: int = 0, **overrides) -> Path:
        """A tiny checkpoint directory (safetensors + config + tokenizer) at `path`."""
        model = self.model(model_type, seed=seed, **overrides)
        model.save_pretrained(path)
        self.tokenizer().save_pretrained(path)
        return Path(path)


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    return Tiny()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny) -> Path:
    """A tiny Llama checkpoint (GQA, 4 query / 2 K/V heads). Copy it before damaging it."""
    return tiny.save(tmp_path_factory.mktemp("tiny") / "llama", "llama")


def _tree_hash(path: Path) -> str:
    """Hash of every file name and content under `path` (or of a single file)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def tree_hash():
    return _tree_hash


# ------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="session")
def run_cli():
    """Run `tensorllm ARGS...` in this process through `tensorllm.cli.main`: (rc, stdout, stderr).

    Exceptions other than the ones the CLI handles propagate, so a test can see them.
    """
    from tensorllm import cli

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved_argv, sys.argv = sys.argv, ["tensorllm", *map(str, args)]
        rc = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                cli.main()
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = saved_argv
        return rc, out.getvalue(), err.getvalue()

    return run


def _cli_env() -> dict:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="session")
def run_cli_process():
    """Run `python -m tensorllm.cli ARGS...` in a fresh interpreter: (rc, stdout, stderr)."""

    def run(*args: str, timeout: float = 600) -> tuple[int, str, str]:
        proc = subprocess.run(
            [sys.executable, "-m", "tensorllm.cli", *map(str, args)],
            capture_output=True,
            text=True,
            env=_cli_env(),
            timeout=timeout,
        )
        return proc.returncode, proc.stdout, proc.stderr

    return run


@pytest.fixture(scope="session")
def run_python():
    """Run a Python snippet in a fresh interpreter (used to prove plain transformers suffices)."""

    def run(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code, *map(str, args)],
            capture_output=True,
            text=True,
            env=_cli_env(),
            timeout=timeout,
        )

    return run


# ------------------------------------------------------------------------------- the real model


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (`smollm2-135m` alias) in float32 on the CPU, loaded once. Do not edit
    its model in place: take `copy.deepcopy(smollm2.model)` (or the `smollm2_model` fixture)."""
    import tensorllm

    try:
        return tensorllm.load_model("smollm2-135m", dtype="float32", device="cpu")
    except tensorllm.UserError as exc:  # no cached copy and no way to fetch one
        _real_unavailable(f"smollm2-135m unavailable: {exc}")


def _real_unavailable(reason: str) -> None:
    """Real weights or data could not be fetched: a failure (CI must not pass without the real-model
    tests), or a skip where the machine is known to be offline (TENSORLLM_TESTS_OFFLINE=1)."""
    if os.environ.get("TENSORLLM_TESTS_OFFLINE") == "1":
        pytest.skip(reason)
    pytest.fail(
        f"{reason} (set TENSORLLM_TESTS_OFFLINE=1 to skip the real-model tests instead)", pytrace=False
    )


@pytest.fixture(scope="session")
def real_unavailable():
    """`real_unavailable(reason)`: fail (or, offline, skip) a test whose real weights or data are missing."""
    return _real_unavailable


@pytest.fixture
def smollm2_model(smollm2):
    """A private copy of the real model that a test may edit."""
    return copy.deepcopy(smollm2.model)


@pytest.fixture(scope="session")
def smollm2_ids(smollm2) -> torch.Tensor:
    return smollm2.tokenizer(REAL_PROMPT, return_tensors="pt")["input_ids"]


# The Gemma-3 alias is dequantised from a 253 MB GGUF on first use (minutes on 2 cores). When the suite
# runs in several processes (`scripts/run.sh test`), the controlling process starts that fetch in a
# child of its own at once, so that it overlaps the suite; the test process that needs the model waits
# on the cache lock (tensorllm.base.files.cache_lock) and finds it.
PREFETCH = "from tensorllm.models.aliases import alias_path; alias_path('gemma3-270m')"


def pytest_sessionstart(session):
    config = session.config
    controller = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
    if controller and os.environ.get("TENSORLLM_TESTS_OFFLINE") != "1":
        config._tensorllm_prefetch = subprocess.Popen(
            [sys.executable, "-c", PREFETCH], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )


def pytest_sessionfinish(session, exitstatus):
    proc = getattr(session.config, "_tensorllm_prefetch", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
