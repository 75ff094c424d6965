"""Load a model from any MODEL string, check it, and save checkpoints atomically.

MODEL may be: a built-in alias (`smollm2-135m`, `minilm-l6`), a local Hugging Face directory,
a `.gguf` file, or a hub id (only when a network exists). Safetensors only unless the user
passes `allow_pickle`; a checkpoint's own code runs only with `trust_remote_code`.

How a MODEL string is resolved and checked (paths never go to the hub): models/resolve.py.

`preflight_output` is the check every command that writes runs before it loads anything: the
output can be created there, is not (inside) an input, and the disk has room for the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tensorllm.archs import ArchSpec, spec_for
from tensorllm.base.devices import device_map_kwargs, parse_dtype, resolve_device
from tensorllm.base.errors import UserError, one_line
from tensorllm.base.files import check_free_space, check_location
from tensorllm.base.progress import quiet_stderr
from tensorllm.models.aliases import ALIASES, alias_dir, check_cached_tokenizer
from tensorllm.models.resolve import hub_kwargs, resolve_local, resolve_model, safetensors_header


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: object
    arch: ArchSpec
    path: Path | None  # local directory or .gguf file (None for a hub id): what outputs must not touch
    spec: str  # what the user typed


def auto_class(config, arch: ArchSpec):
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM if arch.is_decoder else transformers.AutoModel


def load_config(spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False):
    """(config, ArchSpec, local path, from_pretrained kwargs) without loading any weights."""
    from transformers import AutoConfig

    path, gguf_file = resolve_model(spec, allow_pickle)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if path is None:
        kwargs.update(hub_kwargs(spec))
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
    if spec in ALIASES:
        check_cached_tokenizer(ALIASES[spec], tokenizer, path)
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


def input_path(spec: str) -> Path | None:
    """Where MODEL lives on disk (a directory or a .gguf file; None for a hub id), found without loading
    or fetching anything: a mistyped path fails here, before any work."""
    if spec in ALIASES:
        return alias_dir(spec)
    path, gguf_file = resolve_local(spec, allow_pickle=True)  # pickle-only inputs are refused by the load
    return path / gguf_file if path is not None and gguf_file else path


_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def estimate_bytes(path: Path | None, dtype: str | None = None) -> int:
    """About how many bytes the dense checkpoint of the model at `path` takes, loaded as `dtype`
    (None / auto: as stored; a GGUF is dequantised to float32); 0 when it cannot be told yet."""
    if path is None or not path.exists():
        return 0
    target = parse_dtype(dtype)
    size = torch.empty((), dtype=target).element_size() if target is not None else None
    if path.is_file():  # a .gguf: its tensors' elements, dequantised
        try:
            from gguf import GGUFReader

            return sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors) * (size or 4)
        except Exception:  # no gguf package or an unreadable file: the load says which
            return path.stat().st_size
    total = 0
    for shard in sorted(path.glob("*.safetensors")):
        try:
            _, header = safetensors_header(shard)
        except (OSError, ValueError):
            return 0
        for name, t in header.items():
            if name != "__metadata__":
                numel = 1
                for n in t["shape"]:
                    numel *= n
                floating = t["dtype"].startswith(("F", "BF"))
                total += numel * (size if size and floating else _BYTES.get(t["dtype"], 1))
    if not total:  # pickle weights
        total = sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".bin", ".pt"))
    return total


def _param_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, tied ones once: what save_pretrained writes."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def check_inputs_untouched(out: Path, inputs: list[Path | None], what: str = "output directory") -> Path:
    """Refuse an output that is, lies inside, or (for a directory) contains an input."""
    out = Path(out).expanduser().resolve()
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp).expanduser().resolve()
        if out == inp or inp in out.parents:
            raise UserError(f"{what} {out} lies inside the input {inp}")
        if out in inp.parents:  # replacing `out` (--overwrite) would delete the input
            raise UserError(f"{what} {out} contains the input {inp}")
    return out


def check_output_dir(out: Path, inputs: list[Path | None], overwrite: bool) -> Path:
    """Refuse an output that would overwrite, or be written inside, an input (a directory or a file)."""
    out = check_inputs_untouched(out, inputs)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    if out.exists() and not overwrite:
        raise UserError(f"output directory {out} already exists (pass --overwrite to replace it)")
    return out


def preflight_output(
    out: Path, model: str, *, overwrite: bool = False, dtype: str | None = None, what: str = "--out"
) -> Path:
    """Everything about a checkpoint output that can be checked before MODEL is loaded: `out` can be
    created and written, is no input and not inside one, exists only with `overwrite`, and the disk
    has room for the weights (estimated from the input's headers). Returns the resolved output."""
    inp = input_path(model)
    out = check_output_dir(out, [inp], overwrite)
    check_location(out, what=what)
    check_free_space(out, estimate_bytes(inp, dtype), what=what)
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
    check_free_space(out, _param_bytes(loaded.model), what="the checkpoint")
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
