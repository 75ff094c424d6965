"""Python entry point: `tensorllm.compress(model, recipe) -> (model, report)`.

    import tensorllm
    model, report = tensorllm.compress("smollm2-135m", {"steps": [
        {"method": "tucker", "layers": [9], "ranks": [144, 48, 4]}]})

`model` may be a MODEL string (loaded with the recipe's dtype/device), a `Loaded`, or an
in-memory Hugging Face model of a supported architecture. The model is edited in place.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensorllm.archs import blocks, head_layout, spec_for
from tensorllm.attention import qk_norm_note
from tensorllm.base.devices import resolve_device
from tensorllm.methods import factorised, registry
from tensorllm.models.io import Loaded, load_model
from tensorllm.recipe import Recipe
from tensorllm.report import Report


def as_recipe(recipe: Recipe | dict | str | Path) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    return Recipe.load(recipe)


def model_info(model: nn.Module, source: str | None = None) -> dict:
    D, H, Hkv, d = head_layout(model.config)
    spec = spec_for(model.config)
    return {
        "source": source,
        "architecture": spec.name,
        "class": type(model).__name__,
        "hidden": D,
        "heads": H,
        "kv_heads": Hkv,
        "head_dim": d,
        "layers": len(blocks(model, spec)),
        "qk_norms": qk_norm_note(model, spec),  # after the q/k projections; Tucker and LASER leave them be
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def compress(
    model: Any,
    recipe: Recipe | dict | str | Path,
    *,
    tokenizer: Any = None,
    progress: bool = True,
    factors: list | None = None,
) -> tuple[nn.Module, Report]:
    """Apply the recipe's steps in order. `factors`, a list, receives the factors each step keeps
    (methods/factorised.py) for a factorised checkpoint (runtime/factorised.py)."""
    recipe = as_recipe(recipe)
    loaded = model if isinstance(model, Loaded) else None
    if isinstance(model, (str, Path)):
        loaded = load_model(str(model), dtype=recipe.dtype, device=recipe.device)
    if loaded is not None:
        model, tokenizer = loaded.model, tokenizer or loaded.tokenizer
    arch = spec_for(model.config)
    device = resolve_device(recipe.device)
    ctx = registry.RunContext(
        device=device, seed=recipe.seed, tokenizer=tokenizer, source=loaded, progress=progress
    )
    if factors is not None:
        ctx.scratch[factorised.KEY] = factors
    report = Report(recipe=recipe.to_dict(), model=model_info(model, loaded.spec if loaded else None))
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    for step in recipe.steps:
        method = registry.get(step.method)
        ts = time.perf_counter()
        result = method.apply(model, arch, step.config, ctx)
        report.steps.append({"method": step.method, **result, "seconds": time.perf_counter() - ts})
    report.seconds = time.perf_counter() - t0
    return model, report
