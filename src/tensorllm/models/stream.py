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

import math
import re

import torch

from tensorllm.archs import ArchSpec, blocks
from tensorllm.base.errors import UserError
from tensorllm.models.io import auto_class
from tensorllm.models.shards import Checkpoint, Planned, TensorInfo

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
        self.model = self._build(config, "meta")
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

    def _build(self, config, device) -> torch.nn.Module:
        cls = auto_class(config, self.arch)
        build = getattr(cls, "_from_config", None) or cls.from_config  # a model class, or an Auto class
        with torch.device(device):
            return build(config, dtype=self.dtype).eval()

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

    def plan(self, out_config=None) -> list[Planned]:
        """Output tensors in writing order: everything outside the blocks, then block 0, 1, ... With
        `out_config` (a method that changes shapes, e.g. fewer K/V heads), the blocks' shapes are that
        config's."""
        names = self.rest + [k for i in range(self.n_layers) for k in self.keys(i)]
        info = self.ckpt.tensors
        out = [Planned(n, info[n].dtype, info[n].shape, info[n].nbytes) for n in names]
        if out_config is None:
            return out
        shapes = blocks(self._build(out_config, "meta"), self.arch)
        width = {n: torch.empty((), dtype=info[n].torch_dtype).element_size() for n in names}
        for j, e in enumerate(out):
            for i, params in enumerate(self.layer_keys):
                if e.name in params:
                    shape = tuple(shapes[i].state_dict()[params[e.name]].shape)
                    out[j] = Planned(e.name, e.dtype, shape, math.prod(shape) * width[e.name])
        return out

    def load_layer(self, i: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Fill block i from the shards (on the CPU by default: weight-only methods compute on their
        context's device and write back in the parameter's place, so the accelerator holds only their
        work, not the layer); return {checkpoint key: the tensor in the block}."""
        keys = self.keys(i)
        stored = self.ckpt.load(keys)
        block = blocks(self.model, self.arch)[i]
        state = {self.layer_keys[i][k]: stored.pop(k).to(device) for k in keys}
        block.load_state_dict(state, strict=True, assign=True)
        return self.layer_state(i)

    def materialize_outside_blocks(self, device: torch.device) -> None:
        """Make everything outside the blocks real on `device` and fill it from the checkpoint
        (embeddings, final norm, rotary tables: what a forward to the first block needs); the blocks
        stay on meta. Built anew with the block class constructed under the meta device, so buffers
        that are computed rather than stored (RoPE frequencies) are computed as the model does."""
        layer_cls = type(blocks(self.model, self.arch)[0])
        init = layer_cls.__init__

        def on_meta(obj, *args, **kwargs):
            with torch.device("meta"):
                init(obj, *args, **kwargs)

        layer_cls.__init__ = on_meta
        try:
            model = self._build(self.config, device)
        finally:
            layer_cls.__init__ = init
        state = model.state_dict()
        base = getattr(model, "base_model_prefix", "")
        stored = self.ckpt.load(self.rest)
        for key, t in stored.items():
            name = key if key in state or not base else f"{base}.{key}"
            if name in state:
                with torch.no_grad():
                    state[name].copy_(t)
        self.model = model

    def layer_state(self, i: int) -> dict[str, torch.Tensor]:
        """{checkpoint key: current tensor} of a loaded block (what a transform left there)."""
        state = blocks(self.model, self.arch)[i].state_dict()
        return {k: state[self.layer_keys[i][k]] for k in self.keys(i)}

    def unload_layer(self, i: int) -> None:
        blocks(self.model, self.arch)[i].to("meta")


def too_big_for_memory(path, device: torch.device) -> str | None:
    """Why the safetensors weights in `path` would not fit in memory (70% of the RAM available now, or
    of the GPU's free memory when the work runs there), or None when they would."""
    import psutil

    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    room = [("available memory", psutil.virtual_memory().available)]
    if device.type == "cuda":
        room.append(("free GPU memory", torch.cuda.mem_get_info(device)[0]))
    for what, free in room:
        if size > 0.7 * free:
            return f"the weights ({size / 1e9:.1f} GB) would not fit in the {free / 1e9:.1f} GB of {what}"
    return None
