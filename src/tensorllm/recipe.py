"""The recipe: an ordered list of method steps plus where/how to run them.

One object drives the Python API, the CLI (`--recipe FILE.yaml` or flags) and is saved as
`recipe.yaml` beside every output, so a result can be reproduced from its folder alone.

    version: 1
    dtype: auto          # dtype to load the model in (auto = as stored)
    device: auto         # auto = cuda if available
    seed: 0
    steps:
      - method: tucker
        layers: [9]
        ranks: [144, 48, 4]
      - method: laser
        layers: [27]
        matrix: up
        rho: 0.1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tensorllm.base.devices import parse_dtype
from tensorllm.base.errors import UserError, one_line
from tensorllm.methods import registry

RECIPE_VERSION = 1
_TOP_KEYS = {"version", "dtype", "device", "seed", "steps"}


@dataclass
class Step:
    method: str
    config: Any  # the method's typed config

    def to_dict(self) -> dict:
        return {"method": self.method, **registry.config_to_dict(self.config)}


@dataclass
class Recipe:
    steps: list[Step] = field(default_factory=list)
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    version: int = RECIPE_VERSION

    @classmethod
    def single(
        cls, method: str, *, dtype: str = "auto", device: str = "auto", seed: int = 0, **options
    ) -> Recipe:
        return cls.from_dict(
            {"dtype": dtype, "device": device, "seed": seed, "steps": [{"method": method, **options}]}
        )

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        if not isinstance(data, dict):
            raise UserError("a recipe must be a mapping with a 'steps' list")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise UserError(
                f"unknown recipe key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_TOP_KEYS))})"
            )
        version = data.get("version", RECIPE_VERSION)
        if isinstance(version, bool) or version != RECIPE_VERSION:  # repr: a quoted "1" is not version 1
            raise UserError(
                f"recipe version {version!r} is not supported (this tensorllm reads version {RECIPE_VERSION})"
            )
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise UserError("a recipe needs a non-empty 'steps' list")
        steps = []
        for i, raw in enumerate(raw_steps):
            if not isinstance(raw, dict) or "method" not in raw:
                raise UserError(f"recipe step {i + 1} needs a 'method'")
            opts = {k: v for k, v in raw.items() if k != "method"}
            steps.append(Step(raw["method"], registry.config_from_dict(raw["method"], opts)))
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"recipe seed must be an integer, got {seed!r}")
        dtype, device = data.get("dtype", "auto"), data.get("device", "auto")
        if not isinstance(dtype, str) or not isinstance(device, str):
            raise UserError(f"recipe dtype and device must be strings, got {dtype!r} and {device!r}")
        parse_dtype(dtype)  # an unknown dtype is refused now, not after the model has loaded
        return cls(steps, dtype, device, seed, version)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"recipe file {p} {'is a directory' if p.is_dir() else 'does not exist'}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise UserError(f"recipe file {p} is not valid YAML: {one_line(exc)}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "dtype": self.dtype,
            "device": self.device,
            "seed": self.seed,
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
