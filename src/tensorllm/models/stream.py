"""A model too big for memory, one decoder layer at a time: the skeleton lives on the meta device
(shapes only, no memory), and `load_layer(i, device)` fills block i from the checkpoint's shards, so
`archs.py`, `attention.py` and every method's transform work on it unchanged; `unload_layer(i)`
returns it to meta. Everything outside the blocks (embeddings, final norm, head) is never loaded.

Before any work, `check()` matches the checkpoint to the model its config describes: every
parameter of every block has its tensor, with the shape the config gives, and every floating tensor
is stored in the one dtype the config names (the in-memory path would load it so; streaming copies
untouched tensors as stored, so a checkpoint that needs converting is refused with one line).
A checkpoint whose names differ from the model's (a legacy or per-expert layout transformers
converts when loading) is refused too: streaming only handles layouts it can copy as they are.
"""

from __future__ import annotations

import re

import torch

from tensorllm.archs import ArchSpec, blocks
from tensorllm.base.errors import UserError
from tensorllm.models.io import auto_class
from tensorllm.models.shards import Checkpoint, Planned, TensorInfo, dtype_code

_FLOAT = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def _config_dtype(config) -> torch.dtype | None:
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


class StreamedModel:
    """The meta skeleton of a checkpoint's model plus where each block's tensors lie in its shards."""

    def __init__(self, ckpt: Checkpoint, config, arch: ArchSpec):
        self.ckpt, self.config, self.arch = ckpt, config, arch
        self.dtype = self._stored_dtype()
        with torch.device("meta"):
            self.model = auto_class(config, arch)._from_config(config, dtype=self.dtype)
        self.model.eval()
        layers = blocks(self.model, arch)
        self.n_layers = len(layers)
        full = {id(m): n for n, m in self.model.named_modules()}[id(layers)]  # e.g. "model.layers"
        base = getattr(self.model, "base_model_prefix", "")
        short = full[len(base) + 1 :] if base and full.startswith(base + ".") else full
        # checkpoints of the bare model (no head) name their tensors without the base prefix
        self.prefix = full if any(k.startswith(full + ".") for k in ckpt.tensors) else short
        pattern = re.compile(re.escape(self.prefix) + r"\.(\d+)\.(.+)")
        self.layer_keys: list[dict[str, str]] = [{} for _ in range(self.n_layers)]  # ckpt key -> param
        self.rest: list[str] = []
        for key in ckpt.tensors:
            m = pattern.fullmatch(key)
            if m and int(m[1]) < self.n_layers:
                self.layer_keys[int(m[1])][key] = m[2]
            else:
                self.rest.append(key)

    def _stored_dtype(self) -> torch.dtype:
        """The dtype the in-memory path would load: the config's, else the first floating tensor's."""
        floats = [t for t in self.ckpt.tensors.values() if t.dtype in _FLOAT]
        want = _config_dtype(self.config) or (floats[0].torch_dtype if floats else torch.float32)
        for t in floats:
            if t.torch_dtype != want:
                raise UserError(
                    f"tensor {t.name} is stored as {t.dtype}, the config says {want}: streaming copies "
                    "tensors as stored; run without --stream to convert them"
                )
        return want

    def check(self, dtype: torch.dtype | None = None) -> None:
        """Every block parameter present with the config's shape; `dtype` (a recipe's) as stored."""
        if dtype is not None and dtype != self.dtype:
            raise UserError(
                f"the checkpoint is stored as {self.dtype}; streaming keeps that dtype, so dtype {dtype} "
                "needs the in-memory path (--no-stream)"
            )
        for i, block in enumerate(blocks(self.model, self.arch)):
            want = block.state_dict()
            ignored = {n for n, _ in block.named_buffers()} - set(want)  # non-persistent: never saved
            got = {p: k for k, p in self.layer_keys[i].items()}
            for p in want:
                if p not in got:
                    raise UserError(
                        f"the checkpoint has no tensor {self.prefix}.{i}.{p} (shards: {self.ckpt.path})"
                    )
            for p, key in got.items():
                if p not in want and p not in ignored:
                    raise UserError(
                        f"checkpoint tensor {key} is not a parameter of {type(self.model).__name__} "
                        "(transformers converts this layout when loading): run without --stream"
                    )
                if p in want:
                    self._check_shape(self.ckpt.tensors[key], tuple(want[p].shape))
        rest = self.model.state_dict()
        base = getattr(self.model, "base_model_prefix", "")
        for key in self.rest:
            name = key if key in rest or not base else f"{base}.{key}"
            if name in rest:
                self._check_shape(self.ckpt.tensors[key], tuple(rest[name].shape))

    def _check_shape(self, info: TensorInfo, want: tuple[int, ...]) -> None:
        if info.shape != want:
            raise UserError(
                f"tensor {info.name} has shape {list(info.shape)} in {info.file.name}, "
                f"the config says {list(want)}"
            )

    def keys(self, i: int) -> list[str]:
        """Checkpoint keys of block i that belong to the model, in the block's state-dict order."""
        want = blocks(self.model, self.arch)[i].state_dict()
        by_param = {p: k for k, p in self.layer_keys[i].items()}
        return [by_param[p] for p in want]

    def plan(self) -> list[Planned]:
        """Output tensors in writing order: everything outside the blocks, then block 0, 1, ..."""
        names = self.rest + [k for i in range(self.n_layers) for k in self.keys(i)]
        info = self.ckpt.tensors
        return [Planned(n, info[n].dtype, info[n].shape, info[n].nbytes) for n in names]

    def load_layer(self, i: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Fill block i from the shards onto `device`; return {checkpoint key: the tensor in the block}."""
        keys = self.keys(i)
        stored = self.ckpt.load(keys)
        block = blocks(self.model, self.arch)[i]
        block.load_state_dict(
            {self.layer_keys[i][k]: stored.pop(k).to(device) for k in keys}, strict=True, assign=True
        )
        return self.layer_state(i)

    def layer_state(self, i: int) -> dict[str, torch.Tensor]:
        """{checkpoint key: current tensor} of a loaded block (what a transform left there)."""
        state = blocks(self.model, self.arch)[i].state_dict()
        return {k: state[self.layer_keys[i][k]] for k in self.keys(i)}

    def unload_layer(self, i: int) -> None:
        blocks(self.model, self.arch)[i].to("meta")


def planned_from(tensor: torch.Tensor, name: str) -> Planned:
    return Planned(
        name, dtype_code(tensor.dtype), tuple(tensor.shape), tensor.numel() * tensor.element_size()
    )
