"""What makes a search store one search: the identity a store records (model fingerprint, data,
limits, answer mode, batch size, dtype, ...) and how a mismatch is described; a store made by a
different search is refused with these differences."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import torch

from tensorllm.base.errors import UserError
from tensorllm.methods import registry

FORMAT = 2  # 2: the evaluation batch size is part of the identity (bf16 numbers depend on it)
IDENTITY_KEYS = (
    "format",
    "model",
    "task",
    "data",
    "limit_val",
    "limit_test",
    "answer_mode",
    "batch_size",
    "method",
    "dtype",
    "device_type",
    "tensorllm",
    "racing",  # a racing search's parameters (race.py); absent (None) for an exhaustive one
    "method_versions",  # {method: version of its results}; absent in stores made before: all version 1
)


def method_versions(method: str) -> dict[str, int]:
    """The result versions (`Method.version`) of the methods a search of `method` applies: that method,
    or every searchable one for a hybrid search (its steps come from the stores it combines)."""
    chosen = [registry.get(method)] if registry.find(method) else registry.searchable()
    return {m.name: m.version for m in chosen}


def model_fingerprint(model) -> str:
    """A cheap, stable hash of a model: its shape-defining config and a strided sample of every tensor.

    Independent of where the checkpoint lives (a moved directory is the same model) and of the
    transformers version's config defaults; different weights, dtype or head layout change it.
    """
    h = hashlib.sha256()
    cfg = model.config
    for name in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
    ):
        h.update(f"{name}={getattr(cfg, name, None)};".encode())
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].float().cpu().numpy().tobytes()
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
            h.update(sample)
    return h.hexdigest()[:16]


def data_identity(task: str, data: str | os.PathLike | None) -> str:
    """The task's built-in source name, or the sha256 of the --data file's bytes."""
    if data is None:
        from tensorllm.eval import get_task

        return str(get_task(task).builtin)
    path = Path(data).expanduser()
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    from tensorllm.base.files import sha256_file

    return "sha256:" + sha256_file(path)[:16]


def code_version() -> str:
    """tensorllm's version plus the git commit of its source tree when it is a checkout."""
    from tensorllm.base.versions import __version__

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def mismatch(expected: dict, found: dict) -> list[str]:
    """'key: store has X, this search Y' for every identity field that differs."""
    out = []
    for k in IDENTITY_KEYS:
        if k == "method_versions":
            out += _versions_mismatch(found.get(k) or {}, expected.get(k) or {})
        elif found.get(k) != expected.get(k):
            out.append(
                _racing_mismatch(found.get(k), expected.get(k))
                if k == "racing"
                else f"{k}: store has {found.get(k)!r}, this search {expected.get(k)!r}"
            )
    return out


def _versions_mismatch(found: dict, expected: dict) -> list[str]:
    return [
        f"{name} results v{found.get(name, 1)} in the store, v{v} now (start a new --store)"
        for name, v in expected.items()
        if found.get(name, 1) != v
    ]


def _racing_mismatch(found: dict | None, expected: dict | None) -> str:
    if found is None:
        return "racing: the store was made by an exhaustive search; resume it with --exhaustive"
    options = ", ".join(f"{k} {v}" for k, v in found.items())
    if expected is None:
        return f"racing: the store was made by a racing search ({options}); resume it without --exhaustive"
    return f"racing: the store was made by a race with {options}; resume with the same --race-* / --select-by"


# -- writing ---------------------------------------------------------------------------------------
