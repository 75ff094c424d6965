"""Methods by name: each is one module holding a typed config, its transform and a `Method` object that
answers everything the rest of the toolkit asks about it.

    class Tucker(Method):
        name, config_cls = "tucker", TuckerConfig
        def apply(self, model, arch, cfg, ctx) -> dict: ...   # edits `model` in place
    register(Tucker())

The transform returns a JSON-able dict for the report (`{"layers": [...], "summary": {...}}`).
The hooks with defaults below tell the search (which weights a step touches, how user settings
become concrete ones on a model, the grid's columns), the report (how a step is described) and the
CLI (its flags) what they need; nothing outside `methods/` branches on a method's name.
Registration is explicit: `tensorllm/methods/__init__.py` imports each method module.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tensorllm.base.errors import UserError


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
class Flag:
    """One command-line option a method adds to `compress` (sets a config key) or `search` (a grid axis).

    `parse` turns the option's text (or number) into the value stored under `key`; options of the same
    name from several methods are one flag (e.g. `--matrix`), their help texts joined.
    """

    name: str  # option name: "ranks" -> --ranks
    help: str
    type: type = str  # str | int | float: what typer parses
    key: str | None = None  # config / search-option key (default: name)
    parse: Callable[[Any], Any] | None = None

    @property
    def dest(self) -> str:
        return self.key or self.name

    def value(self, raw: Any) -> Any:
        return raw if self.parse is None else self.parse(raw)


@dataclass
class Column:
    """One column of a search grid: a label and the step options (all but `layers`) it stands for."""

    label: str
    options: dict


class Method:
    """Base class of every method; a subclass sets `name` and `config_cls` and implements `apply`."""

    name: str = ""
    config_cls: type = object
    compress_flags: tuple[Flag, ...] = ()  # options of `tensorllm compress` for this method
    search_flags: tuple[Flag, ...] = ()  # options of `tensorllm search` (grid axes)
    searchable: bool = False  # weights change in place (same shapes): the search can apply and restore it
    # the version of its results: raised when the same canonical step starts to give other weights, so
    # that a search store holding results of the earlier version is refused instead of mixed in
    version: int = 1
    data_free_column: str | None = None  # a grid column chosen from the weights alone (reported apart)
    # weight-only, layer by layer: `apply` on a model whose one selected block is loaded gives that
    # block's result, from its weights alone (no data, no other layer, no global RNG), so a checkpoint
    # larger than memory can stream through it (tensorllm.streamed)
    streamable: bool = False

    def apply(self, model, arch, cfg, ctx: RunContext) -> dict:
        raise NotImplementedError

    # -- the search -----------------------------------------------------------------------------
    def touched_modules(self, arch, step: dict) -> list[str]:
        """Module paths (relative to a block) whose parameters one canonical step may write."""
        raise UserError(f"the search cannot apply '{self.name}' steps (they change the model's shape)")

    def check_search(self, options: dict) -> None:
        """Refuse search options that cannot build a grid (before any model is loaded)."""

    def columns(self, options: dict) -> tuple[str, list[Column]]:
        """(column title, columns) of the grid for these search options."""
        raise UserError(f"the search has no grid for method '{self.name}'")

    def concrete_step(self, model, arch, layer: int, options: dict) -> dict:
        """The canonical step of one grid cell: every data-free choice resolved on this model."""
        return canonical_step(self.name, {"layers": [layer], **options})

    # -- streaming ----------------------------------------------------------------------------------
    def merge_results(self, results: list[dict]) -> dict:
        """One step's result from `apply`'s results on one layer each (in layer order): what `apply` on
        all of them at once returns. The default joins the layer records and recomputes the summary's
        `layers`, `mean_rel_error` (mean of the records' `rel_error`) and `compression_rate` (total
        `params_before` / total `params_after`); a method with other aggregates overrides it."""
        records = [r for res in results for r in res["layers"]]
        summary = dict(results[0]["summary"])
        summary["layers"] = [r["layer"] for r in records]
        if "mean_rel_error" in summary:
            summary["mean_rel_error"] = sum(r["rel_error"] for r in records) / len(records)
        if "compression_rate" in summary:
            before = sum(r["params_before"] for r in records)
            summary["compression_rate"] = before / sum(r["params_after"] for r in records)
        return {"layers": records, "summary": summary}

    def streams(self, cfg) -> bool:
        """Whether this step can stream layer by layer (`streamable`, unless its config needs every layer)."""
        return self.streamable

    # -- factorised checkpoints -----------------------------------------------------------------------
    def check_factorised(self, cfg, arch=None) -> None:
        """Refuse (UserError) a step that cannot keep its factors (`compress --format factorised`); a method
        that can keeps them through methods/factorised.py when its context asks. `arch` is None before
        the model is loaded (the checks that need no model run first)."""
        raise UserError(f"method '{self.name}' has no factorised form (use --format dense)")

    # -- the report -------------------------------------------------------------------------------
    def describe(self, step: dict) -> str:
        return f"{self.name} L{layers_label(step)}"

    def settings_label(self, step: dict) -> str:
        """The resolved settings of one step, short (the heatmap shows it for data-free cells)."""
        return ""


def parse_floats(text: str, what: str) -> list[float]:
    """'0.9,0.1' -> [0.9, 0.1] (a grid axis given on the command line)."""
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"{what} '{text}' must be comma-separated numbers") from None
    if not values:
        raise UserError(f"{what} '{text}' holds no value")
    return values


def split_names(text: str) -> tuple[str, ...]:
    """'up,down' -> ('up', 'down')."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


def layers_label(step: dict) -> str:
    raw = step.get("layers")
    if isinstance(raw, str):
        return raw
    return ",".join(map(str, raw if isinstance(raw, (list, tuple)) else [raw]))


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if not method.name or method.name in _METHODS:
        raise ValueError(f"method name {method.name!r} is empty or registered twice")
    _METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}' (available: {', '.join(names())})")
    return _METHODS[name]


def find(name: str) -> Method | None:
    return _METHODS.get(name)


def names() -> list[str]:
    return sorted(_METHODS)


def all_methods() -> list[Method]:
    return [_METHODS[n] for n in names()]


def searchable() -> list[Method]:
    return [m for m in all_methods() if m.searchable]


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
        raise UserError(
            f"unknown option(s) {', '.join(unknown)} for method '{method}' (allowed: {', '.join(names_)})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{method}.{k}") for k, v in data.items()}
    cfg = cls(**kwargs)
    check = getattr(cfg, "validate", None)
    if check:
        check()
    return cfg


def added_later(default: Any = None) -> Any:
    """A config field added after results were first stored: `config_to_dict` leaves it out while it
    holds its default, so the canonical steps (and the store keys hashed from them) of configurations
    that do not use it stay what they were before the field existed."""
    return field(default=default, metadata={"omit_at_default": True})


def config_to_dict(cfg: Any) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.metadata.get("omit_at_default") and v == f.default:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def canonical_step(method: str, options: dict) -> dict:
    """{"method": name, every option of its typed config} after validation: a step as a store keeps it."""
    return {"method": method, **config_to_dict(config_from_dict(method, options))}
