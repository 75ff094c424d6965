"""Apply one configuration to the loaded model, and undo it exactly afterwards.

The model is loaded once per search. For each configuration, `Applier.applied(config)`:
1. snapshots only the parameters its steps touch (each method's `touched_modules` hook: for a Tucker
   step the attention projections of its layers, for a LASER step one matrix), as clones on the
   model's device;
2. applies the steps with `tensorllm.compress(model, recipe)`, or, when the same step (same layer,
   same resolved ranks, same options) was computed before in this process, writes the cached
   result instead, so no Tucker decomposition is computed twice;
3. checks that nothing outside the snapshot changed (parameter version counters and identities);
4. after the block, copies the snapshot back: the model is bit-identical to before
   (tests/search/test_apply.py asserts it).

The cache keeps results on the CPU, least recently used first out, within `cache_bytes`
(SmolLM2-135M: ~3.5 MB per fp32 layer, so a whole 30 x 4 grid fits in the default 2 GiB).
A step is cached only when it runs on original weights (no earlier step of the same
configuration touched its parameters), because its result depends on its input.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tensorllm.api import compress
from tensorllm.archs import blocks, get_module
from tensorllm.base.errors import UserError
from tensorllm.base.layers import parse_layers
from tensorllm.methods import registry
from tensorllm.recipe import Recipe, Step
from tensorllm.search.grid import Config, config_key


def touched_params(model: nn.Module, arch, step: dict) -> list[str]:
    """Names of the parameters a canonical step may write (weights and biases of its modules)."""
    n_layers = len(blocks(model, arch))
    layers = parse_layers(step.get("layers"), n_layers)
    paths = registry.get(step["method"]).touched_modules(arch, step)
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for layer in layers:
        for path in paths:
            try:
                mod = get_module(blocks(model, arch)[layer], path)
            except AttributeError:
                raise UserError(f"{arch.name} has no module '{path}' in layer {layer}") from None
            for p in mod.parameters(recurse=False):
                out.append(names[id(p)])
    return out


class StepCache:
    """{step key: ({param name: tensor on CPU}, the step's report)}, LRU within a byte budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.items: OrderedDict[str, tuple[dict[str, torch.Tensor], dict]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str):
        item = self.items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: str, tensors: dict[str, torch.Tensor], report: dict) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.max_bytes:
            return
        self.items[key] = (tensors, report)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (old, _) = self.items.popitem(last=False)
            self.bytes -= sum(t.numel() * t.element_size() for t in old.values())


def _summary(step_report: dict) -> dict:
    """The parts of a compress() step report worth keeping per configuration."""
    out = {"method": step_report["method"], "seconds": round(step_report.get("seconds", 0.0), 4)}
    layers = step_report.get("layers") or []
    keep = (
        "layer",
        "ranks",
        "rank",
        "matrix",
        "compression_rate",
        "rel_error",
        "hooi_iterations",
        "converged",
    )
    out["layers"] = [{k: r[k] for k in keep if k in r} for r in layers]
    return out


class Applier:
    def __init__(self, model: nn.Module, arch, *, tokenizer=None, seed: int = 0, cache_bytes: int = 2 << 30):
        self.model = model
        self.arch = arch
        self.tokenizer = tokenizer
        self.seed = seed
        self.device = next(model.parameters()).device
        self.cache = StepCache(cache_bytes)
        self.computed: list[str] = []  # keys of the steps actually computed (not served from cache)

    def _params(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def _compute(self, step: dict) -> dict:
        opts = {k: v for k, v in step.items() if k != "method"}
        recipe = Recipe(
            [Step(step["method"], registry.config_from_dict(step["method"], opts))],
            dtype="auto",
            device=str(self.device),
            seed=self.seed,
        )
        _, report = compress(self.model, recipe, tokenizer=self.tokenizer, progress=False)
        return report.steps[0]

    def _apply(self, config: Config, params: dict[str, nn.Parameter]) -> list[dict]:
        reports, written = [], set()
        for step in config.steps:
            names = touched_params(self.model, self.arch, step)
            key = config_key([step])
            cacheable = not written.intersection(names)
            hit = self.cache.get(key) if cacheable else None
            t0 = time.perf_counter()
            if hit is not None:
                tensors, rep = hit
                with torch.no_grad():
                    for n, t in tensors.items():
                        params[n].copy_(t.to(params[n].device))
                reports.append({**rep, "cached": True, "seconds": round(time.perf_counter() - t0, 4)})
            else:
                rep = _summary(self._compute(step))
                self.computed.append(key)
                if cacheable:
                    self.cache.put(key, {n: params[n].detach().to("cpu", copy=True) for n in names}, rep)
                reports.append({**rep, "cached": False})
            written.update(names)
        return reports

    @contextmanager
    def applied(self, config: Config) -> Iterator[list[dict]]:
        """Apply `config` for the duration of the block; yield its step reports; restore exactly."""
        params = self._params()
        names = sorted({n for s in config.steps for n in touched_params(self.model, self.arch, s)})
        snapshot = {n: params[n].detach().clone() for n in names}
        versions = {n: (id(p), p._version) for n, p in params.items()}
        try:
            reports = self._apply(config, params)
            self._check_untouched(versions, set(names))
            yield reports
        finally:
            now = self._params()
            with torch.no_grad():
                for n, saved in snapshot.items():
                    if now[n].shape != saved.shape:
                        raise RuntimeError(f"{n} changed shape during the search; cannot restore it")
                    now[n].copy_(saved)

    def _check_untouched(self, versions: dict[str, tuple[int, int]], allowed: set[str]) -> None:
        for n, p in self._params().items():
            if n in allowed:
                continue
            if versions.get(n) != (id(p), p._version):
                raise RuntimeError(
                    f"applying a configuration changed {n}, which the search did not snapshot "
                    "(the method's touched_modules hook is incomplete)"
                )
