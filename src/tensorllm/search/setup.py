"""A search's set-up: the model, the task check, the identity its store is made for, the grid."""

from __future__ import annotations

import torch

from tensorllm.base.errors import UserError
from tensorllm.search import racing, transfer
from tensorllm.search.grid import Config, Grid, hybrid_grid, method_grid, recipes_grid
from tensorllm.search.identity import (
    FORMAT,
    code_version,
    data_identity,
    method_versions,
    mismatch,
    model_fingerprint,
)
from tensorllm.search.race import RaceParams
from tensorllm.search.spec import HYBRID, SearchSpec
from tensorllm.search.store import Store, now


def load(spec: SearchSpec, loaded, device: torch.device):
    """The model to search (`loaded` as it is, when given)."""
    from tensorllm.base.devices import eval_dtype
    from tensorllm.models.io import load_model

    if loaded is None:
        loaded = load_model(
            spec.model,
            dtype=eval_dtype(spec.dtype, device),
            device=str(device),
            trust_remote_code=spec.trust_remote_code,
            allow_pickle=spec.allow_pickle,
        )
        if spec.expand_kv:
            from tensorllm.models.expand_kv import expand_kv

            expand_kv(loaded.model, loaded.arch)
    return loaded


def check_task(spec: SearchSpec, model, tokenizer) -> tuple[int, RaceParams | None]:
    """Bad task data (malformed file, empty split, labels the tokenizer cannot tell apart, a first race
    slice larger than the split, ...) fails here, before the store is created: a store is never left
    behind by a search that could not start. Returns the validation split's size and the race."""
    from tensorllm.eval import get_task
    from tensorllm.eval.evaluate import preflight, task_items

    task = get_task(spec.task)
    for split, limit in (("val", spec.limit_val), ("test", spec.limit_test)):
        preflight(model, tokenizer, task, split, limit, spec.data)
    for other in transfer.report_tasks(spec):  # other tasks read their built-in sources
        for split in ("val", "test") if other in spec.selection_tasks else ("test",):
            preflight(
                model,
                tokenizer,
                get_task(other),
                split,
                spec.limit_val if split == "val" else spec.limit_test,
            )
    n_val = len(task_items(tokenizer, task, "val", spec.limit_val, spec.data)[0])
    params = spec.race_params()
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")  # half precision: finalists rescored
    return n_val, params.resolved(n_val, dtype) if params is not None else None


def identity(
    spec: SearchSpec, model, arch, device: torch.device, race: RaceParams | None
) -> tuple[dict, dict]:
    """(the store's identity, its info): what must match to resume, and what is only recorded."""
    from tensorllm.base.versions import __version__, versions

    ident = {
        "format": FORMAT,
        "model": model_fingerprint(model),
        "task": spec.task,
        "data": data_identity(spec.task, spec.data),
        "limit_val": spec.limit_val,
        "limit_test": spec.limit_test,
        "answer_mode": spec.answer_mode,
        "batch_size": spec.batch_size,
        "method": spec.method,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device_type": device.type,
        "tensorllm": __version__,
        "method_versions": method_versions(spec.method),
    }
    if race is not None:  # absent for an exhaustive search, as in the stores made before racing
        ident["racing"] = race.identity()
    info = {
        "model_spec": spec.model,
        "expand_kv": spec.expand_kv,
        "architecture": arch.name,
        "data_file": str(spec.data) if spec.data else None,
        "created": now(),
        "code_version": code_version(),
        "versions": versions(),
    }
    return ident, info


def grid(spec: SearchSpec, model, arch, ident: dict, n_val: int) -> Grid:
    if spec.method != HYBRID:
        return method_grid(model, arch, spec.method, spec.layers, spec.options)
    if spec.recipes:
        return recipes_grid(list(spec.recipes))
    return hybrid_grid([top_k(src, ident, spec.top_k, n_val) for src in spec.sources])


def top_k(source: str, ident: dict, k: int, n_val: int) -> list[tuple[str, Config]]:
    """The best k configurations of an earlier search's store (exhaustive or racing)."""
    store = Store(source)
    found = store.manifest()
    if found is None:
        raise UserError(f"--from {source} is not a search store (no store.json)")
    # the same search but for its method (and that method's result version)
    own = {
        **ident,
        "method": found.get("method"),
        "method_versions": method_versions(str(found.get("method"))),
    }
    diff = [d for d in mismatch(own, found) if not d.startswith(("method:", "racing:"))]
    if diff:
        raise UserError(f"--from {source} was measured on a different search ({'; '.join(diff)})")
    done = racing.ranked(store, n_val, (found.get("racing") or {}).get("by", "accuracy"))
    if not done:
        raise UserError(f"--from {source} holds no evaluated configuration")
    return [(Config(tuple(line["steps"])).describe(), Config(tuple(line["steps"]))) for line in done[:k]]
