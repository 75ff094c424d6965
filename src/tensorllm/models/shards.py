"""Safetensors shards read tensor by tensor and written as they fill, never a whole model in memory.

`Checkpoint(dir)` reads a local checkpoint (`model.safetensors`, or shards named by
`model.safetensors.index.json`) after checking it: every shard the index names is present, every
shard's header parses (ours and safetensors' own reader agree) and describes exactly the bytes on
disk (a truncated or padded file is refused). Tensors load with `safe_open`, one group at a time,
each file closed after the group (so no mapping of a whole shard stays resident); a tensor no
transform touches is copied byte for byte, file to file, without being converted.

`ShardWriter(dir, plan)` writes the planned shards in order: a shard's header goes first (the plan
knows every name, dtype and shape), then each tensor's bytes as it arrives, so nothing waits in
memory for its shard to fill. `position()` is where a killed run can continue: `ShardWriter(...,
resume=position)` truncates the shard in progress there and drops any later one. Shards follow
`save_pretrained`'s names (`model-00001-of-00004.safetensors`; one shard: `model.safetensors`) and
`model.safetensors.index.json` (`metadata.total_size`, `weight_map`) when there are several.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tensorllm.base.errors import UserError, one_line

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_CODES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_CODE_OF = {v: k for k, v in _CODES.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str  # safetensors code: BF16, F32, ...
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in `file`
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def torch_dtype(self) -> torch.dtype:
        return _CODES[self.dtype]


def dtype_code(dtype: torch.dtype) -> str:
    return _CODE_OF[dtype]


def read_header(path: Path) -> tuple[dict, int]:
    """(header without `__metadata__`, absolute offset of the data) of one safetensors file, checked."""
    size = path.stat().st_size

    def bad(why: str) -> UserError:
        return UserError(f"corrupt safetensors file {path}: {why}")

    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise bad(f"{size} bytes, too short for a header")
        n = int.from_bytes(raw, "little")
        if n > size - 8 or n > 1 << 30:
            raise bad(f"header length {n} exceeds the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError) as exc:
            raise bad(f"unreadable header ({one_line(exc)})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a mapping")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        try:
            code, shape, (lo, hi) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
            width = torch.empty((), dtype=_CODES[code]).element_size()
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name} has no valid dtype, shape and data_offsets") from None
        if not 0 <= lo <= hi or (hi - lo) != math.prod(shape) * width:
            raise bad(f"tensor {name}: offsets {lo}..{hi} do not hold {code} {shape}")
        end = max(end, hi)
    if 8 + n + end != size:
        raise bad(f"{size} bytes on disk, the header describes {8 + n + end} (truncated or padded)")
    return header, 8 + n


class Checkpoint:
    """A local safetensors checkpoint, checked on opening; see the module docstring."""

    def __init__(self, path: Path):
        self.path = Path(path)
        index = self.path / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UserError(f"unreadable shard index {index}: {one_line(exc)}") from None
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise UserError(f"shard {missing[0]} named in {index} is missing ({len(missing)} missing)")
        elif (self.path / SINGLE).is_file():
            weight_map, files = None, [SINGLE]
        else:
            raise UserError(f"{self.path} has neither {SINGLE} nor {INDEX}: cannot stream it")
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            file = self.path / name
            header, start = read_header(file)
            _check_with_safetensors(file, set(header))
            for key, e in header.items():
                if weight_map is None or weight_map.get(key) == name:
                    lo, hi = e["data_offsets"]
                    self.tensors[key] = TensorInfo(
                        key, file, e["dtype"], tuple(e["shape"]), start + lo, start + hi
                    )
        absent = [k for k, f in (weight_map or {}).items() if k not in self.tensors]
        if absent:
            raise UserError(f"tensor {absent[0]} is not in shard {weight_map[absent[0]]} that {INDEX} names")

    @property
    def files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors.values()})

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors on the CPU, as stored; each file opened once and closed afterwards."""
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        for file in sorted({self.tensors[n].file for n in names}):
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for n in names:
                    if self.tensors[n].file == file:
                        out[n] = f.get_tensor(n)
        return out


def _check_with_safetensors(file: Path, keys: set[str]) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            if set(f.keys()) != keys:
                raise UserError(f"corrupt safetensors file {file}: safetensors reads other tensor names")
    except UserError:
        raise
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise UserError(f"corrupt safetensors file {file}: {one_line(exc)}") from None


# ---------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Planned:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def parse_size(text: str | int) -> int:
    """'5GB' -> 5 * 10**9 (save_pretrained's units: KB/MB/GB decimal, KiB/MiB/GiB binary)."""
    if isinstance(text, int):
        return text
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    s = str(text).strip().upper()
    for unit, mult in units.items():
        if s.endswith(unit):
            try:
                value = float(s[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return int(value * mult)
    raise UserError(f"shard size '{text}' is not a size such as 5GB, 500MB or 2GiB")


def plan_shards(entries: list[Planned], max_bytes: int) -> list[list[Planned]]:
    """Fill shards in order, as save_pretrained does: a tensor opens a new shard when it would push
    the current one past `max_bytes` (a tensor larger than that gets a shard of its own)."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    return [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def header_bytes(entries: list[Planned]) -> bytes:
    """The safetensors header of one planned shard, padded with spaces so the data starts 8-aligned."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": e.dtype,
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text


class ShardWriter:
    """Writes the planned shards in order, tensor by tensor; resumable at a recorded `position()`."""

    def __init__(self, folder: Path, plan: list[list[Planned]], resume: list[int] | None = None):
        self.folder, self.plan = Path(folder), plan
        self.names = shard_names(len(plan))
        self.shard, self.entry, self.fh = 0, 0, None
        if resume is not None:  # [shard, entry, byte offset] of a position() a run recorded
            self.shard, self.entry, offset = resume
            for name in self.names[self.shard + 1 :]:
                (self.folder / name).unlink(missing_ok=True)
            if self.shard < len(plan) and offset:
                self.fh = open(self.folder / self.names[self.shard], "r+b")
                self.fh.truncate(offset)
                self.fh.seek(offset)
            elif self.shard < len(plan):
                (self.folder / self.names[self.shard]).unlink(missing_ok=True)

    def _next(self, name: str) -> Planned:
        if self.shard >= len(self.plan):
            raise RuntimeError(f"{name}: every planned shard is already written")
        planned = self.plan[self.shard][self.entry]
        if planned.name != name:
            raise RuntimeError(f"shard plan expects {planned.name} next, got {name}")
        if self.fh is None:
            self.fh = open(self.folder / self.names[self.shard], "wb")
            self.fh.write(header_bytes(self.plan[self.shard]))
        return planned

    def _advance(self) -> None:
        self.entry += 1
        if self.entry == len(self.plan[self.shard]):
            self.fh.flush()
            _sync(self.fh)
            self.fh.close()
            self.fh, self.shard, self.entry = None, self.shard + 1, 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        planned = self._next(name)
        shape, code = tuple(tensor.shape), dtype_code(tensor.dtype)
        if (code, shape) != (planned.dtype, planned.shape):
            raise RuntimeError(f"{name}: planned {planned.dtype} {planned.shape}, got {code} {shape}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)  # (nbytes,)
        self.fh.write(memoryview(data.numpy()))
        self._advance()

    def copy(self, info: TensorInfo) -> None:
        """Copy a stored tensor's bytes through unconverted (kernel-side where the OS allows)."""
        planned = self._next(info.name)
        if (info.dtype, info.shape) != (planned.dtype, planned.shape):
            raise RuntimeError(f"{info.name}: planned {planned.dtype} {planned.shape}, stored differently")
        self.fh.flush()
        with open(info.file, "rb") as src:
            _copy_range(src, self.fh, info.begin, info.nbytes)
        self._advance()

    def position(self) -> list[int]:
        """Flush to disk and return [shard, entry, byte offset]: everything before it is durable."""
        if self.fh is None:
            return [self.shard, self.entry, 0]
        self.fh.flush()
        _sync(self.fh)
        return [self.shard, self.entry, self.fh.tell()]

    def finish(self) -> list[str]:
        """Write the index (several shards) and return the shard file names."""
        if self.shard != len(self.plan):
            raise RuntimeError(f"shard plan not complete: at shard {self.shard + 1} of {len(self.plan)}")
        if len(self.plan) > 1:
            weight_map = {e.name: f for f, s in zip(self.names, self.plan) for e in s}
            total = sum(e.nbytes for s in self.plan for e in s)
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return self.names

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _sync(fh) -> None:
    """Data on disk before the state that points past it is written (fdatasync where there is one)."""
    getattr(os, "fdatasync", os.fsync)(fh.fileno())


def _copy_range(src, dst, offset: int, count: int) -> None:
    pos, done = dst.tell(), 0
    try:
        while done < count:
            n = os.copy_file_range(src.fileno(), dst.fileno(), count - done, offset + done, pos + done)
            if n == 0:
                raise OSError("copy_file_range copied nothing")
            done += n
        dst.seek(pos + done)
        return
    except (AttributeError, OSError):
        pass  # not Linux, or a file system without it: plain reads from where it stopped
    src.seek(offset + done)
    dst.seek(pos + done)
    while done < count:
        chunk = src.read(min(1 << 24, count - done))
        if not chunk:
            raise UserError(f"{src.name} ended early while copying a tensor")
        dst.write(chunk)
        done += len(chunk)
