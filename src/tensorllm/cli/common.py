"""What every command shares: the output console, the MODEL argument, the options methods add."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable

import typer

from tensorllm.base.errors import UserError
from tensorllm.base.progress import output_console
from tensorllm.methods import registry
from tensorllm.methods.registry import Flag

console = output_console()

ModelArg = typer.Argument(
    ..., help="Alias (smollm2-135m, minilm-l6), local HF directory, .gguf file or hub id."
)


# -- options that methods add to a command ----------------------------------------------------------


def merged_flags(kind: str, only: str | None = None) -> list[Flag]:
    """Every method's flags of `kind` ("compress_flags" or "search_flags"), one per option name; the
    help texts of a name several methods share are joined (their key, type and parser must agree).
    only="gqa": that method's flags alone (a command of one method)."""
    by_name: dict[str, Flag] = {}
    for method in [registry.get(only)] if only else registry.all_methods():
        for flag in getattr(method, kind):
            seen = by_name.get(flag.name)
            if seen is None:
                by_name[flag.name] = flag
                continue
            if (seen.dest, seen.type, seen.parse) != (flag.dest, flag.type, flag.parse):
                raise TypeError(f"--{flag.name} means different things to different methods")
            by_name[flag.name] = dataclasses.replace(seen, help=f"{seen.help.rstrip('.')}; {flag.help}")
    return list(by_name.values())


def _param(flag: Flag) -> str:
    return "flag_" + flag.name.replace("-", "_")  # --sink-tokens -> flag_sink_tokens


def with_method_flags(func: Callable, kind: str, only: str | None = None) -> Callable:
    """A typer command of `func` with every method's flags (only="gqa": that method's) added as options;
    `func` receives the ones given as `method_flags={name: raw value}` (resolve them with
    `method_options`)."""
    flags = merged_flags(kind, only)
    hints = typing.get_type_hints(func)
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(func).parameters.values()
        if p.name != "method_flags"
    ]
    params += [
        inspect.Parameter(
            _param(f),
            inspect.Parameter.KEYWORD_ONLY,
            annotation=f.type | None,
            default=typer.Option(None, f"--{f.name}", help=f.help),
        )
        for f in flags
    ]

    @functools.wraps(func)
    def command(**kwargs):
        given = {f.name: kwargs.pop(_param(f)) for f in flags}
        return func(**kwargs, method_flags={k: v for k, v in given.items() if v is not None})

    del command.__wrapped__  # typer must read the signature below, not func's
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def method_options(method: str, kind: str, given: dict) -> dict:
    """The given flags as the options of `method` (config keys / search options); a flag of another
    method is refused in one line rather than ignored."""
    own = {f.name: f for f in getattr(registry.get(method), kind)}
    stray = [name for name in given if name not in own]
    if stray:
        allowed = ", ".join(f"--{n}" for n in own) or "none"
        raise UserError(
            f"{', '.join('--' + n for n in stray)} is not an option of method '{method}' "
            f"(its options: {allowed})"
        )
    return {own[name].dest: own[name].value(raw) for name, raw in given.items()}
