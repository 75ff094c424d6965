"""Process-level parallelism for the search (and helpers for spreading one model over GPUs).

Two ways to run N processes, both data-parallel over configurations:

- `tensorllm search ... --gpus N` spawns N processes itself (`torch.multiprocessing`, start
  method "spawn"), each told its rank through the same environment variables torchrun sets;
- `torchrun --nproc-per-node N -m tensorllm.cli search ...` starts them from outside; the
  search reads RANK / WORLD_SIZE / LOCAL_RANK and does not spawn again.

Backend: NCCL between GPUs, gloo on CPU. The processes meet at barriers (every decision is read
from the shared store on disk, see store.py) and take configurations from a shared counter in the
process group's key-value store (`Claims`): whichever rank is free takes the next one, so a faster
rank, or one that started earlier, does more. No tensor is communicated.
Anything this module launches gets `NCCL_NVLS_ENABLE=0`: NVLink multicast (NVLS) stays off.

"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from tensorllm.base.errors import UserError

# A rank that finished its share waits at a barrier for the slowest one; a search phase can take
# hours, far past the default collective timeouts (10 min for NCCL), so barriers wait this long.
BARRIER_TIMEOUT = timedelta(hours=48)
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0"}


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _group_store():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def run_index(world: World) -> int:
    """Which search this is among those run in this process group (0, 1, ...), the same on every
    rank: each rank adds 1 to a shared counter once per search. Names the search's claim counters, so
    a second search in the same group (a torchrun worker calling run_search twice) starts afresh."""
    if world.size == 1:
        return 0
    return (int(_group_store().add("tensorllm/searches", 1)) - 1) // world.size


class Claims:
    """Hands out indices 0..n-1, each to exactly one rank, to whichever asks first.

    All ranks build `Claims(world, tag, n)` with the same tag and n; `next()` returns this rank's next
    index, or None when all n are taken. One process counts locally; several share a counter in the
    process group's key-value store (`add` is atomic there). Tags must not repeat within one group."""

    def __init__(self, world: World, tag: str, n: int):
        self.n, self.tag, self.taken = n, f"tensorllm/claims/{tag}", 0
        self.store = _group_store() if world.size > 1 else None

    def next(self) -> int | None:
        if self.store is None:
            index = self.taken
        else:
            index = int(self.store.add(self.tag, 1)) - 1
        self.taken = index + 1  # indices below this one are taken, by some rank
        return index if index < self.n else None

    def left(self) -> int:
        """Indices no rank has taken yet, as far as this rank knows."""
        return max(0, self.n - self.taken)


def world_from_env() -> World | None:
    """The world torchrun (or our own spawn) described in the environment; None when not launched so."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        size, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except ValueError:
        raise UserError("RANK / WORLD_SIZE / LOCAL_RANK in the environment must be integers") from None
    if not 0 <= rank < size:
        raise UserError(f"RANK {rank} is outside WORLD_SIZE {size}")
    return World(rank, size, local, local_size)


def apply_safe_env() -> None:
    """Settings every process the toolkit starts must see (NVLink multicast off)."""
    os.environ.update(SAFE_ENV)


def rank_device(device: str, world: World) -> torch.device:
    """The device of this rank: cuda:<local rank> when several processes share a GPU host."""
    from tensorllm.base.devices import resolve_device

    dev = resolve_device(device)
    if dev.type != "cuda" or world.size == 1:
        return dev
    if dev.index is not None:
        raise UserError(f"--device {device} names one GPU, but {world.size} processes run; use --device cuda")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise UserError(f"process {world.local_rank} has no GPU of its own ({count} visible)")
    return torch.device("cuda", world.local_rank)


def check_gpus(n: int, device: str) -> None:
    """Before spawning: n processes need n GPUs, unless they run on the CPU."""
    if n < 1:
        raise UserError(f"--gpus must be >= 1, got {n}")
    from tensorllm.base.devices import resolve_device

    if resolve_device(device).type == "cuda" and n > torch.cuda.device_count():
        raise UserError(f"--gpus {n} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration of the block (nothing to do for one process)."""
    if world.size == 1:
        yield
        return
    import torch.distributed as dist

    apply_safe_env()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device  # binds the communicator to this rank's GPU up front
    dist.init_process_group(
        backend, rank=world.rank, world_size=world.size, timeout=BARRIER_TIMEOUT, **kwargs
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size == 1:
        return
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(index: int, fn: Callable, nprocs: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(index), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(index), LOCAL_WORLD_SIZE=str(nprocs)
    )
    # the tokenizers' thread pool sizes itself from the cores on first use: share them out too
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
    fn(*args)


def _stop(processes, grace: float = 10.0) -> None:
    """SIGTERM every process still running, then SIGKILL what is left after `grace` seconds."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def spawn(fn: Callable, nprocs: int, args: tuple) -> None:
    """Run `fn(*args)` in `nprocs` fresh processes (ranks 0..nprocs-1 on this host); wait for all.

    A UserError in any process comes back as a UserError; a process that dies takes the others down,
    and so does this one when it is interrupted (SIGTERM, SIGINT): no rank outlives the command.
    """
    import torch.multiprocessing as mp

    keys = ("MASTER_ADDR", "MASTER_PORT", *SAFE_ENV)
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(SAFE_ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        context = mp.start_processes(_spawned, args=(fn, nprocs, args), nprocs=nprocs, join=False)
        try:
            while not context.join():
                pass
        except BaseException:
            _stop(context.processes)
            raise
    except mp.ProcessRaisedException as exc:
        found = re.findall(r"tensorllm\.base\.errors\.(?:UserError|OutputError): (.*)", str(exc))
        if found:
            raise UserError(found[-1].strip()) from None
        raise
    except mp.ProcessExitedException as exc:
        raise UserError(
            f"search process {exc.error_index} died ({exc}); rerun the same command to resume "
            "(finished configurations are kept in the store)"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
