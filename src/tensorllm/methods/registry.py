"""Methods by name: each is a typed config (a dataclass) plus one transform function.

    @register("tucker", TuckerConfig)
    def apply_tucker(model, arch, cfg, ctx) -> dict: ...

The transform edits `model` in place and returns a JSON-able dict for the report
(`{"layers": [...per-layer records...], "summary": {...}}`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from tensorllm.errors import UserError


@dataclass
class RunContext:
    """What a transform may need beyond the model: where to compute, seed, tokenizer, source."""

    device: torch.device
    seed: int = 0
    tokenizer: Any = None
    source: Any = None  # tensorllm.models.io.Loaded, when the model came from load_model
    progress: bool = True
    scratch: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    apply: Callable[..., dict]
    doc: str


_METHODS: dict[str, Method] = {}
_MODULES = ("tucker", "laser", "gqa")


def register(name: str, config_cls: type):
    def deco(fn):
        _METHODS[name] = Method(name, config_cls, fn, (fn.__doc__ or "").strip())
        return fn

    return deco


def _load_all() -> None:
    # Import the method modules so that they register themselves.
    import importlib

    for mod in _MODULES:
        importlib.import_module(f"tensorllm.methods.{mod}")


def get(name: str) -> Method:
    _load_all()
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}' (available: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def names() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` (a small subset of typing), converting lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[-1] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_from_dict(method: str, data: dict) -> Any:
    """Build the typed config of `method` from a plain dict, rejecting unknown keys and bad types."""
    cls = get(method).config_cls
    hints = typing.get_type_hints(cls)
    names_ = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names_))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for method '{method}' "
                        f"(allowed: {', '.join(names_)})")
    kwargs = {k: _coerce(v, hints[k], f"{method}.{k}") for k, v in data.items()}
    cfg = cls(**kwargs)
    check = getattr(cfg, "validate", None)
    if check:
        check()
    return cfg


def config_to_dict(cfg: Any) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
