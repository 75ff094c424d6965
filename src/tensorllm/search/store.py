"""The search store: one directory that holds everything a search has finished, so it can resume.

    STORE/
      store.json            manifest: the search identity (written once, atomically) + info
      results-rank0.jsonl   append-only results, one JSON line per (configuration, split)
      results-rank1.jsonl   ... one file per process rank of a distributed search
      report.md, report.json, heatmap.png   written by rank 0 at the end of each run
      .lock                 the running search's pid, host and start time (empty when none runs)

Why append-only JSON Lines, one file per rank (rather than one file per configuration): a result
is one `write` of one line followed by `fsync`, so a finished configuration is durable before the
next one starts; a SIGKILL can only tear the very last line of a file, which the reader ignores
and the next writer of that file cuts off before appending (it holds an exclusive `flock`, so no
two processes ever write one file). Every process owns its file, so ranks never contend, and the
store stays a handful of files that `cat`, `jq` or pandas read directly. The reader merges all
files and keeps the first line of each (key, split); the search never evaluates a pair that is
already there, so duplicates do not arise in normal use.

A line's `key` is a stable hash of the configuration's canonical recipe steps (grid.py), so an
extended grid (more layers, more ranks) reuses the results it shares with an earlier one.

The identity (model fingerprint, task, data, split limits, answer mode, method, dtype, device
type, tensorllm version) is fixed when the store is created; a store written by a different search
is refused, because mixing results measured on different data or models would make the
selection meaningless.

One search per store: the main process (rank 0 of a distributed one, whose other ranks only write
their own result files) holds `.lock` for the whole run, before the model is loaded. The lock is an
exclusive `flock` on the file, which the kernel releases however the holder ends, and the file
names the holder, so a second search refuses in one line naming it. A lock whose recorded holder
is gone (kill -9) is taken over with a log line. On a file system without `flock` (some network
mounts) the recorded pid alone decides: taken over only when that process is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from tensorllm.base.errors import OutputError, UserError
from tensorllm.base.files import atomic_write_text, check_location, owner_alive, owner_record
from tensorllm.search.identity import mismatch

MANIFEST = "store.json"
RESULTS_GLOB = "results-rank*.jsonl"
LOCK = ".lock"
_OWN_FILES = {MANIFEST, LOCK, "report.md", "report.json", "heatmap.png"}


# -- identity --------------------------------------------------------------------------------------


class Writer:
    """Appends result lines to one file that this process owns (exclusive flock) until `close`."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UserError(f"another search is writing {path} (one search per store at a time)") from None
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        """Drop a last line without its newline (a write that a kill interrupted)."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            return
        tail = os.pread(self.fd, min(size, 1 << 20), max(0, size - (1 << 20)))
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = (size - len(tail) + cut + 1) if cut >= 0 else 0
        if cut < 0 and size > len(tail):
            raise UserError(f"{self.path}: last line longer than 1 MiB without a newline; not a result file")
        os.ftruncate(self.fd, keep)
        os.fsync(self.fd)

    def append(self, record: dict) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        view = memoryview(data)
        size = os.fstat(self.fd).st_size
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            os.fsync(self.fd)
        except OSError as exc:  # a full disk, an I/O error: the results so far stay, this one goes
            try:
                os.ftruncate(self.fd, size)
            except OSError:
                pass  # a torn line is cut off by the next writer anyway
            raise OutputError(
                f"cannot append to {self.path} ({exc.strerror or exc}); the results before it are kept, "
                "rerun the same command to resume"
            ) from None

    def close(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


# -- the store -------------------------------------------------------------------------------------


def _read_lock(fd: int) -> dict | None:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _busy(root: Path, owner: dict | None) -> UserError:
    who = ""
    if owner:
        who = f" (pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('started', '?')})"
    return UserError(f"another search is running on store {root}{who}; wait for it to finish or stop it")


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self._lock_fd = -1
        self._made: list[Path] = []  # what lock() created, removed by close() if no search started here
        self._opened = False  # open() succeeded: this is a search store now

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{self.manifest_path} is not valid JSON (not a search store?)") from None

    def lock(self) -> str | None:
        """Take the store's lock for this process (creating the store folder if need be); a UserError
        naming the holder if another search has it. Returns a line to log when it took over the lock
        of a search that is gone."""
        if self._lock_fd >= 0:
            return None
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--store {self.root} exists and is not a directory")
        check_location(self.root, what="the store")
        path = self.root / LOCK
        missing = [p for p in (self.root, *self.root.parents) if not p.exists()]
        new_file = not path.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot create the store {self.root} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            kernel = True
        except BlockingIOError:
            owner = _read_lock(fd)
            os.close(fd)
            raise _busy(self.root, owner) from None
        except OSError:  # no flock on this file system: the pid in the file decides
            kernel = False
        owner = _read_lock(fd)
        if owner and not kernel and owner_alive(owner):
            os.close(fd)
            raise _busy(self.root, owner)
        record = json.dumps({**owner_record(), "started": now()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self._lock_fd = fd
        self._made = missing if missing else ([path] if new_file else [])
        if owner and owner.get("pid") is not None:
            return (
                f"store {self.root}: took over the lock of pid {owner.get('pid')} on {owner.get('host')}, "
                "which is no longer running"
            )
        return None

    def check_free(self) -> None:
        """Refuse now, in one line, if another search holds the lock (before spawning processes)."""
        self.lock()
        self.close()

    def open(self, identity: dict, info: dict) -> None:
        """Create the store for `identity`, or check that the existing one belongs to it (main process).

        Also takes the store's lock (`lock`) for the life of this process if it does not hold it yet,
        so a second search on the same store stops instead of evaluating the same configurations again.
        """
        self.lock()
        found = self.manifest()
        if found is None:
            stray = sorted(p.name for p in self.root.iterdir() if p.name not in _OWN_FILES)
            if stray:
                raise UserError(
                    f"--store {self.root} is a non-empty directory without {MANIFEST} "
                    f"(holds {stray[0]}); pick a new or empty directory"
                )
            atomic_write_text(self.manifest_path, json.dumps({**identity, "info": info}, indent=2) + "\n")
        else:
            self.check(identity, found)
        self._opened = True

    def check(self, identity: dict, found: dict | None = None) -> None:
        found = self.manifest() if found is None else found
        if found is None:
            raise UserError(f"{self.root} is not a search store (no {MANIFEST})")
        diff = mismatch(identity, found)
        if diff:
            raise UserError(
                f"store {self.root} belongs to a different search ({'; '.join(diff)}); use another --store"
            )

    def close(self) -> None:
        """Release the lock (the file stays, empty); if no search started (open() never succeeded),
        remove what lock() made, so a search that could not start leaves nothing behind."""
        if self._lock_fd < 0:
            return
        try:
            os.ftruncate(self._lock_fd, 0)
        except OSError:
            pass
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = -1
        if self._made and not self._opened:
            for p in [self.root / LOCK, *self._made]:  # the lock file, then the folders, deepest first
                try:
                    p.rmdir() if p.is_dir() else p.unlink()
                except OSError:
                    break  # not empty (something else was written there): keep the rest
        self._made = []

    def writer(self, rank: int) -> Writer:
        return Writer(self.root / f"results-rank{rank}.jsonl")

    def files(self) -> list[Path]:
        return sorted(self.root.glob(RESULTS_GLOB), key=lambda p: (len(p.name), p.name))

    def lines(self) -> Iterator[dict]:
        """Every complete result line of every rank file (a torn last line is skipped)."""
        for path in self.files():
            chunks = path.read_bytes().split(b"\n")
            # The last chunk has no newline after it: empty, or a write that a kill cut short (the
            # next writer of this file cuts it off). Only newline-terminated lines count.
            for i, chunk in enumerate(chunks[:-1]):
                if not chunk.strip():
                    continue
                try:
                    yield json.loads(chunk)
                except ValueError:
                    raise UserError(f"{path} line {i + 1} is corrupt (not JSON)") from None

    def results(self, split: str | None = None) -> dict[str, dict]:
        """{key: line} of one split (or {(key, split) as "key/split": line} for all), first line wins."""
        out: dict[str, dict] = {}
        for line in self.lines():
            if split is not None and line.get("split") != split:
                continue
            if "part" in line:  # a racing search's result on some items only: race.split_view merges them
                continue
            k = line["key"] if split is not None else f"{line['key']}/{line['split']}"
            out.setdefault(k, line)
        return out


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
