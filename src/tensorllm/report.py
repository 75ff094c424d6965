"""The JSON report saved beside every output: what ran, on what, with which results and timings."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tensorllm.base.files import atomic_write_text
from tensorllm.base.versions import versions


@dataclass
class Report:
    recipe: dict
    model: dict  # source, architecture, head layout
    steps: list[dict] = field(default_factory=list)  # one per recipe step: method, layers[], summary{}
    seconds: float = 0.0
    versions: dict = field(default_factory=versions)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    extra: dict[str, Any] = field(default_factory=dict)  # evaluations, generations, ...

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())
