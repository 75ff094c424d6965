"""Load a factorised checkpoint with tensorllm's runtime modules (`tensorllm.load`), and export it dense.

`load` checks the checkpoint against its config before building anything: every factor the config's
`tensorllm_factorised` list names must be in the weights with the shape its sizes and ranks give
(a missing factor, a mis-shaped one, a module the model does not have, or a factorised module that
still holds dense weights is one `UserError`). A directory without that list loads as a plain
checkpoint (`load_model`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tensorllm.archs import spec_for
from tensorllm.base.devices import parse_dtype, resolve_device
from tensorllm.base.errors import UserError, one_line
from tensorllm.models.io import Loaded, load_model, save_checkpoint
from tensorllm.runtime import factorised_modules as fm


def read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is not a checkpoint directory (no config.json)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}/config.json is not valid JSON: {one_line(exc)}") from None


def expected_tensors(entry: dict) -> dict[str, tuple[int, ...]]:
    """Parameter name (under entry['path']) -> shape, from the entry's sizes and ranks."""
    if entry["kind"] == "lowrank":
        return {"right": (entry["rank"], entry["in"]), "left": (entry["out"], entry["rank"])}
    D, H, Hkv, d = entry["hidden"], entry["heads"], entry["kv_heads"], entry["head_dim"]
    R1, R2, R3 = entry["ranks"]
    out = {"u1": (D, R1), "u2": (d, R2)}
    if entry["form"] == "core":
        return {**out, "core": (R1, R2, R3, Hkv), "u3": (entry["slot_count"], R3)}
    return {**out, "qkv": ((H + 2 * Hkv) * R2, R1), "o": (R1, H * R2)}


def _headers(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for shard in sorted(path.glob("*.safetensors")):
        with open(shard, "rb") as fh:
            try:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            except (ValueError, json.JSONDecodeError) as exc:
                raise UserError(f"corrupt safetensors file {shard}: {one_line(exc)}") from None
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    if not shapes:
        raise UserError(f"{path} holds no weights (*.safetensors)")
    return shapes


def check_checkpoint(path: Path, spec: dict) -> None:
    """Refuse a factorised checkpoint whose weights do not hold the factors its config names."""
    if not isinstance(spec, dict) or spec.get("version") != fm.FORMAT_VERSION:
        version = spec.get("version") if isinstance(spec, dict) else spec
        raise UserError(
            f"{path}: factorised format version {version!r} (this tensorllm reads {fm.FORMAT_VERSION})"
        )
    shapes = _headers(path)
    for entry in spec.get("modules") or ():
        try:
            want = expected_tensors(entry)
            where = f"layer {entry['layer']} ({entry['kind']} at {entry['path']})"
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: malformed factorised entry {one_line(exc)} in config.json") from None
        present = [n for n in want if f"{entry['path']}.{n}" in shapes]
        if not present:
            raise UserError(
                f"{path}: config.json names {where} as factorised, but the weights hold no factors for it"
            )
        for name, shape in want.items():
            key = f"{entry['path']}.{name}"
            if key not in shapes:
                raise UserError(f"{path}: factor {key} of {where} is missing from the weights")
            if shapes[key] != shape:
                raise UserError(
                    f"{path}: factor {key} has shape {list(shapes[key])}, but the sizes and ranks in "
                    f"config.json give {list(shape)} (inconsistent factors)"
                )
        dense = [entry["path"]] if entry["kind"] == "lowrank" else [entry[p] for p in fm.PARTS]
        stale = [f"{p}.weight" for p in dense if f"{p}.weight" in shapes]
        if stale:
            raise UserError(f"{path}: {where} is factorised but the weights also hold dense {stale[0]}")


def classes(spec: dict) -> tuple[type, type, type]:
    """(base config class, factorised config class, factorised model class) of a spec."""
    import transformers

    base_config = getattr(transformers, str(spec.get("base_config")), None)
    base_model = getattr(transformers, str(spec.get("base_architecture")), None)
    if base_config is None or base_model is None:
        raise UserError(
            f"this transformers ({transformers.__version__}) has no {spec.get('base_architecture')} / "
            f"{spec.get('base_config')} that the factorised checkpoint was made from"
        )
    return (base_config, *fm.factorised_classes(base_config, base_model))


def base_config_dict(config: dict) -> dict:
    """The dense model's config.json content from a factorised one's."""
    spec = config[fm.SPEC_KEY]
    out = {k: v for k, v in config.items() if k not in (fm.SPEC_KEY, "auto_map")}
    return {**out, "model_type": spec["base_model_type"], "architectures": [spec["base_architecture"]]}


def load(path: str | Path, *, dtype: str | None = None, device: str | None = None) -> Loaded:
    """Load a tensorllm output: a factorised checkpoint with the runtime modules (no dense weight is
    ever rebuilt), any other checkpoint with `load_model`."""
    from transformers import AutoTokenizer

    path = Path(path).expanduser()
    config = read_config(path) if path.is_dir() else {}
    if fm.SPEC_KEY not in config:
        return load_model(str(path), dtype=dtype, device=device)
    spec = config[fm.SPEC_KEY]
    check_checkpoint(path, spec)
    base_config, config_cls, model_cls = classes(spec)
    dense_config = base_config.from_dict(base_config_dict(config))
    kwargs = {"use_safetensors": True}
    if parse_dtype(dtype) is not None:
        kwargs["dtype"] = parse_dtype(dtype)
    try:
        model = model_cls.from_pretrained(str(path), config=config_cls.from_pretrained(str(path)), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path), config=dense_config)  # runs no checkpoint code
    except AttributeError as exc:  # install(): a module path the model does not have
        raise UserError(f"{path}: config.json names a module the model has not: {one_line(exc)}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load the factorised checkpoint {path}: {one_line(exc)}") from None
    model.to(resolve_device(device)).eval()
    return Loaded(model, tokenizer, spec_for(dense_config), path, str(path))


# ---------------------------------------------------------------- export


def _dense_module(weight: torch.Tensor, bias: torch.Tensor | None, conv1d: bool) -> nn.Module:
    """A Linear (out, in) or a GPT-2 Conv1D (stores (in, out)) holding `weight` (out, in)."""
    out_f, in_f = weight.shape
    if conv1d:
        from transformers.pytorch_utils import Conv1D

        mod = Conv1D(out_f, in_f).to(weight.device, weight.dtype)
        mod.weight.data = weight.T.contiguous()
    else:
        mod = nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        mod.weight.data = weight.contiguous()
    if bias is not None:
        mod.bias.data = bias.detach().clone()
    return mod


def densify(model: nn.Module, spec: dict | None = None) -> dict:
    """Replace every factorised module of `model` (those of `spec`, default its config's) by a dense one
    holding the product of its factors (in place); return the dense model's config.json content."""
    spec = spec or getattr(model.config, fm.SPEC_KEY)
    for entry in spec["modules"]:
        if entry["kind"] == "lowrank":
            mod = model.get_submodule(entry["path"])
            fm._replace(
                model, entry["path"], _dense_module(mod.dense(), mod.bias, entry["layout"] == "conv1d")
            )
            continue
        owner = model.get_submodule(entry["path"])
        weights = owner.dense()
        for p in fm.PARTS:
            fm._replace(model, entry[p], _dense_module(weights[p], model.get_submodule(entry[p]).bias, False))
        parent, _, name = entry["path"].rpartition(".")
        delattr(model.get_submodule(parent), name)
    config = json.loads(model.config.to_json_string(use_diff=False))
    return base_config_dict(config) if fm.SPEC_KEY in config else config


def export_dense(path: str | Path, out: Path, *, overwrite: bool = False) -> Path:
    """Write the dense rebuild of a factorised checkpoint as a standard one (recipe and report kept)."""
    path = Path(path).expanduser()
    if fm.SPEC_KEY not in read_config(path):
        raise UserError(f"{path} is not a factorised checkpoint (its config.json has no {fm.SPEC_KEY})")
    loaded = load(path, device="cpu")
    config = densify(loaded.model)
    extra = {"config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}
    for name in ("recipe.yaml", "report.json"):
        if (path / name).is_file():
            extra[name] = (path / name).read_text(encoding="utf-8")
    return save_checkpoint(loaded, out, overwrite=overwrite, extra_files=extra)
