"""Bridge to lm-evaluation-harness: evaluate an in-memory model on its tasks, without saving it.

    results = run_lm_eval(model, tokenizer, ["hellaswag", "arc_easy"], limit=100)

lm-eval is an optional extra (`pip install 'tensorllm[lm-eval]'`), imported only here. `HFLM` takes
the model object itself (`pretrained=<PreTrainedModel>`), so a compressed model is scored as it
is in memory. `include_path` adds a folder of the user's own task YAML files (local data, offline).
"""

from __future__ import annotations

import math
from pathlib import Path

from tensorllm.base.errors import UserError


def require_lm_eval() -> None:
    """UserError unless lm-eval (the optional extra) can be imported."""
    _import()


def check_args(
    tasks: list[str],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    include_path: str | None = None,
) -> list[str]:
    """The task names, stripped; a UserError for an option lm-eval would choke on or silently accept."""
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise UserError("--lm-eval needs at least one task name")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be a positive number of examples, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--lm-eval-include {include_path} is not a directory")
    return tasks


def _import():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(
            "lm-eval is not installed; install the extra: pip install 'tensorllm[lm-eval]'"
        ) from None
    return lm_eval, HFLM, TaskManager


def _plain(value):
    """JSON-safe copy: NaN / inf become None, unknown objects their str()."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    batch_size: int = 16,
    limit: int | None = None,
    num_fewshot: int | None = None,
    include_path: str | None = None,
    seed: int = 0,
) -> dict:
    """Run lm-eval `tasks` on the in-memory model; return {"results", "versions", "n-shot", "limit"}."""
    tasks = check_args(tasks, limit=limit, num_fewshot=num_fewshot, include_path=include_path)
    lm_eval, HFLM, TaskManager = _import()
    manager = None
    if include_path:  # the user's folder alone indexes in a blink; lm-eval's ~10k YAML files take seconds
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not all(t in manager.all_tasks for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(
            f"lm-eval does not know task(s) {', '.join(unknown)}"
            + ("" if include_path else " (pass --lm-eval-include DIR for your own task YAML files)")
        )
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        device=str(next(model.parameters()).device),
    )
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        limit=limit,
        num_fewshot=num_fewshot,
        task_manager=manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if out is None:  # only non-zero ranks of a distributed run get None
        return {}
    return _plain(
        {
            "results": out.get("results", {}),
            "versions": out.get("versions", {}),
            "n-shot": out.get("n-shot", {}),
            "limit": limit,
        }
    )
