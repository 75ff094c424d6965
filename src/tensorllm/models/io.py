"""Load a model from any MODEL string, check it, and save checkpoints atomically.

MODEL may be: a built-in alias (`smollm2-135m`, `minilm-l6`), a local Hugging Face directory,
a `.gguf` file, or a hub id (only when a network exists). Safetensors only unless the user
passes `allow_pickle`; a checkpoint's own code runs only with `trust_remote_code`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tensorllm.archs import ArchSpec, spec_for
from tensorllm.base.devices import device_map_kwargs, parse_dtype, resolve_device
from tensorllm.base.errors import UserError, one_line
from tensorllm.base.progress import quiet_stderr
from tensorllm.models.aliases import ALIASES, alias_path


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: object
    arch: ArchSpec
    path: Path | None  # local directory or .gguf file (None for a hub id): what outputs must not touch
    spec: str  # what the user typed


def _check_local_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            if not allow_pickle:
                raise UserError(
                    f"{path} holds only pickle (.bin) weights; pass --allow-pickle to load them "
                    "(pickle can run arbitrary code)"
                )
            return
        raise UserError(f"{path} holds no weights (*.safetensors)")
    from safetensors import safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                keys = list(f.keys())
                if keys:
                    f.get_slice(keys[-1])
        except Exception as exc:  # safetensors raises several types for a damaged header
            raise UserError(f"corrupt safetensors file {shard}: {one_line(exc)}") from None
        size = shard.stat().st_size
        with open(shard, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise UserError(
                f"corrupt safetensors file {shard}: {size} bytes on disk, header describes "
                f"{8 + header_len + end} (truncated or padded)"
            )


def auto_class(config, arch: ArchSpec):
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM if arch.is_decoder else transformers.AutoModel


def _resolve(spec: str, allow_pickle: bool) -> tuple[Path | None, str | None]:
    """MODEL string -> (local directory or None for a hub id, gguf file name or None)."""
    if spec in ALIASES:
        return alias_path(spec), None
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"model file {p} does not exist")
        return p.parent, p.name
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{p} is neither a checkpoint directory nor a .gguf file")
        if not os.access(p, os.R_OK | os.X_OK):
            raise UserError(f"model directory {p} is not readable")
        _check_local_dir(p, allow_pickle)
        return p, None
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return None, None  # hub id: transformers resolves it (and fails clearly offline)
    raise UserError(
        f"model '{spec}' not found: not a directory, .gguf file, hub id or alias ({', '.join(ALIASES)})"
    )


def load_config(spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False):
    """(config, ArchSpec, local path, from_pretrained kwargs) without loading any weights."""
    from transformers import AutoConfig

    path, gguf_file = _resolve(spec, allow_pickle)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    source = str(path) if path is not None else spec
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        hint = " (pass --trust-remote-code to run it)" if "trust_remote_code" in str(exc) else ""
        raise UserError(f"cannot read the config of '{spec}'{hint}: {one_line(exc)}") from None
    return config, spec_for(config), path, source, kwargs


def load_model(
    spec: str,
    *,
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    check_finite: bool = True,
    device_map: str | None = None,
) -> Loaded:
    """Load MODEL. `device_map` ("auto", "balanced", ...) spreads a model too large for one GPU over
    all visible GPUs with accelerate instead of moving it to `device`."""
    from transformers import AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    dev = resolve_device(device)
    config, arch, path, source, kwargs = load_config(
        spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    gguf_file = kwargs.get("gguf_file")
    cls = auto_class(config, arch)
    load_kwargs = dict(kwargs)
    if torch_dtype is not None:
        load_kwargs["dtype"] = torch_dtype
    if not allow_pickle and not gguf_file:
        load_kwargs["use_safetensors"] = True
    load_kwargs.update(device_map_kwargs(device_map))
    try:
        with quiet_stderr(bool(gguf_file)):  # transformers' GGUF loader draws a bar unconditionally
            model = cls.from_pretrained(source, **load_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load '{spec}': {one_line(exc)}") from None
    if gguf_file:  # dequantised now: drop the quantiser so the model saves as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    if check_finite:
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise UserError(f"weights of '{spec}' contain NaN or Inf (first in {name})")
    if device_map is None:
        model.to(dev)
    model.eval()
    # For a .gguf the input is the file, not its folder: outputs may live beside it.
    return Loaded(model, tokenizer, arch, path / gguf_file if gguf_file else path, spec)


def check_output_dir(out: Path, inputs: list[Path | None], overwrite: bool) -> Path:
    """Refuse an output that would overwrite, or be written inside, an input (a directory or a file)."""
    out = Path(out).expanduser().resolve()
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp).resolve()
        if out == inp or inp in out.parents:
            raise UserError(f"output directory {out} lies inside the input {inp}")
        if out in inp.parents:  # replacing `out` (--overwrite) would delete the input
            raise UserError(f"output directory {out} contains the input {inp}")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    if out.exists() and not overwrite:
        raise UserError(f"output directory {out} already exists (pass --overwrite to replace it)")
    return out


def save_checkpoint(
    loaded: Loaded,
    out: Path,
    *,
    overwrite: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
    extra_dirs: dict[str, Path] | None = None,
) -> Path:
    """Write a plain checkpoint (safetensors + config + tokenizer + extra text files) atomically."""
    import shutil

    from tensorllm.base.files import atomic_dir

    out = check_output_dir(out, [loaded.path], overwrite)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            if isinstance(data, bytes):
                (tmp / name).write_bytes(data)
            else:
                (tmp / name).write_text(data, encoding="utf-8")
        for name, src in (extra_dirs or {}).items():
            shutil.copytree(src, tmp / name)
    return out
