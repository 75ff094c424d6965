"""BIG-bench task files, fetched offline-style from the PyPI source package `bigbench==1.0.0`.

The sdist (358 MB) carries every BIG-bench task as JSON. `pip download` cannot fetch it (its
setup.py declares a direct-URL dependency), so we ask the package index for the file URL through
its JSON simple API (PEP 691), stream the download through a sha256 check and a streaming tar
reader, and keep only the few members we need. Nothing is written to the cache unless the whole
file matched the pinned sha256.

Members kept (paths inside the sdist, below `bigbench-1.0.0/`):
- `qa_wikidata`: `bigbench/benchmark_tasks/qa_wikidata/task.json` (20,442 prompts; 18,933 have
  exactly one target)
- `fever`: `bigbench/benchmark_tasks/fact_checker/fever/task.json` (6,612 FEVER claims, true/false)
- `epistemic_reasoning`: `bigbench/benchmark_tasks/epistemic_reasoning/task.json` (2,000
  premise/hypothesis pairs, `target_scores` over entailment / non-entailment; 741 entailments)
- `paragraphs`: `bigbench/benchmark_tasks/squad_shifts/new_wiki_v1.0.json`: SQuADShifts' "new
  Wikipedia" set, 1,581 English Wikipedia paragraphs (48 articles, collected in 2019 by the SQuAD
  pipeline). Chosen for perplexity: plain encyclopaedic English prose, no markup, and unlike
  SQuAD v1.1's own dev set not the most copied paragraphs on the web.
- `wiki_squad_dev`: `bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json`: SQuAD v1.1's dev
  set, 2,067 English Wikipedia paragraphs of 48 other articles; `nyt`: `.../nyt_v1.0.json`,
  SQuADShifts' 2,017 New York Times paragraphs (797 articles). Both only lengthen the default
  English text (`tensorllm.data.default_calibration_text`) after the new-Wikipedia paragraphs:
  more distinct text for a long fine-tune.

Cache: `$TENSORLLM_CACHE/data/bigbench/bigbench-1.0.0/` plus `manifest.json` (written last). A
cache fetched before a member was added keeps serving the members it lists; only asking for a member
it lacks (or `fetch_bigbench`, which wants them all) fetches the sdist again, under the cache lock.
A local copy of the sdist can be given with `--sdist PATH` or `TENSORLLM_BIGBENCH_SDIST`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tensorllm.base.errors import UserError
from tensorllm.base.files import atomic_dir, cache_dir, cache_lock

PACKAGE = "bigbench"
VERSION = "1.0.0"
SDIST = f"bigbench-{VERSION}.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
SDIST_ENV = "TENSORLLM_BIGBENCH_SDIST"
_PREFIX = f"bigbench-{VERSION}/"

MEMBERS: dict[str, str] = {
    "qa_wikidata": "bigbench/benchmark_tasks/qa_wikidata/task.json",
    "fever": "bigbench/benchmark_tasks/fact_checker/fever/task.json",
    "epistemic_reasoning": "bigbench/benchmark_tasks/epistemic_reasoning/task.json",
    "paragraphs": "bigbench/benchmark_tasks/squad_shifts/new_wiki_v1.0.json",
    "wiki_squad_dev": "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json",
    "nyt": "bigbench/benchmark_tasks/squad_shifts/nyt_v1.0.json",
}


@dataclass(frozen=True)
class FetchResult:
    directory: Path
    fetched: bool  # False when everything was already cached
    source: str  # "cache", a local sdist path, or the download URL


def data_dir() -> Path:
    return cache_dir("data", "bigbench") / f"bigbench-{VERSION}"


def _complete(directory: Path, keys=None) -> bool:
    """Whether the members `keys` (default: all) were extracted by a finished fetch."""
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        listed = json.loads(manifest.read_text())["members"]
    except (ValueError, KeyError):
        return False
    wanted = [MEMBERS[k] for k in keys] if keys is not None else MEMBERS.values()
    return all(rel in listed and (directory / rel).is_file() for rel in wanted)


def bigbench_file(key: str) -> Path:
    """Path of one kept member (a key of MEMBERS); fetches on first use."""
    directory = data_dir()
    if not _complete(directory, [key]):  # a cache from before a member was added still serves the others
        fetch_bigbench()
    return directory / MEMBERS[key]


def fetch_bigbench(sdist: str | Path | None = None, *, progress: bool = True) -> FetchResult:
    """Make sure the kept members are cached; return where. A second call does nothing."""
    directory = data_dir()
    if _complete(directory):
        return FetchResult(directory, False, "cache")
    with cache_lock(cache_dir("locks") / f"{directory.name}.lock", f"BIG-bench {SDIST}"):
        if _complete(directory):  # another process fetched it while this one waited
            return FetchResult(directory, False, "cache")
        return _fetch(directory, sdist, progress)


def _fetch(directory: Path, sdist: str | Path | None, progress: bool) -> FetchResult:
    local = sdist if sdist is not None else os.environ.get(SDIST_ENV) or None
    if local is not None:
        path = Path(local).expanduser()
        if not path.is_file():
            raise UserError(f"BIG-bench sdist {path} does not exist")
        try:
            with open(path, "rb") as fh:
                _extract(fh, path.stat().st_size, directory, str(path), progress)
        except OSError as exc:
            raise UserError(f"cannot read {path} ({_reason(exc)})") from None
        return FetchResult(directory, True, str(path))
    url, size = _find_sdist_url()
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=60, context=_ssl_context()) as resp:
            total = int(resp.headers.get("Content-Length") or size or 0)
            _extract(resp, total, directory, url, progress)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise UserError(
            f"download of {SDIST} failed ({_reason(exc)}); download it yourself and pass "
            f"--sdist PATH (or set {SDIST_ENV})"
        ) from None
    return FetchResult(directory, True, url)


# -- finding the file on the package index ------------------------------------------------------


def index_url() -> str:
    """The simple-index URL pip would use: PIP_INDEX_URL, pip's config, else pip's default."""
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        return env.split()[0]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip().split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from pip._internal.models.index import PyPI
    except ImportError:
        raise UserError(
            f"cannot tell which package index to use (pip is not importable); pass --sdist PATH "
            f"to a local {SDIST}"
        ) from None
    return PyPI.simple_url


def _find_sdist_url() -> tuple[str, int | None]:
    page = index_url().rstrip("/") + f"/{PACKAGE}/"
    req = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60, context=_ssl_context()) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = resp.read()
            page = resp.geturl()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(
            f"cannot reach the package index at {page} ({_reason(exc)}); pass --sdist PATH "
            f"to a local {SDIST} (or set {SDIST_ENV})"
        ) from None
    if "json" in ctype:
        for f in json.loads(body).get("files", []):
            if f.get("filename") == SDIST:
                return urllib.parse.urljoin(page, f["url"]), f.get("size")
    else:  # PEP 503 HTML page (e.g. a mirror without the JSON API)
        for href in re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace")):
            if urllib.parse.urlsplit(href).path.rsplit("/", 1)[-1] == SDIST:
                return urllib.parse.urljoin(page, href.split("#")[0]), None
    raise UserError(f"the package index lists no {SDIST}; pass --sdist PATH to a local copy")


def _ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("PIP_CERT") or None
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc).splitlines()[0]


# -- streaming extraction -----------------------------------------------------------------------


class _HashingReader:
    """File-like wrapper that hashes and counts every byte the tar reader pulls through it."""

    def __init__(self, raw: BinaryIO, on_bytes=None):
        self.raw, self.sha, self.n, self.on_bytes = raw, hashlib.sha256(), 0, on_bytes

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.sha.update(chunk)
        self.n += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))
        return chunk

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _extract(raw: BinaryIO, total: int, directory: Path, source: str, progress: bool) -> None:
    wanted = {_PREFIX + rel: rel for rel in MEMBERS.values()}
    with (
        _byte_progress(total, f"BIG-bench {SDIST}", progress) as advance,
        atomic_dir(directory, overwrite=True) as tmp,
    ):
        reader = _HashingReader(raw, advance)
        found: dict[str, str] = {}
        try:
            with tarfile.open(fileobj=reader, mode="r|gz") as tar:
                for member in tar:
                    rel = wanted.get(member.name)
                    if rel is None or not member.isfile():
                        continue
                    src = tar.extractfile(member)
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    h = hashlib.sha256()
                    with open(target, "wb") as out:
                        while chunk := src.read(1 << 20):
                            h.update(chunk)
                            out.write(chunk)
                    found[rel] = h.hexdigest()
            reader.drain()  # the digest covers the whole file, including any trailing bytes
        except (tarfile.TarError, EOFError) as exc:  # corrupt or truncated data (network errors propagate)
            raise UserError(f"{source} is not a readable {SDIST} ({_reason(exc)})") from None
        if reader.sha.hexdigest() != SDIST_SHA256:
            raise UserError(
                f"{source} does not have the sha256 of {SDIST} (got {reader.sha.hexdigest()[:16]}..., "
                f"want {SDIST_SHA256[:16]}...)"
            )
        missing = sorted(set(MEMBERS.values()) - set(found))
        if missing:
            raise UserError(f"{source} lacks {', '.join(missing)}")
        manifest = {
            "package": f"{PACKAGE}=={VERSION}",
            "sdist_sha256": SDIST_SHA256,
            "source": source,
            "members": found,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))


class _byte_progress:
    """A rich bar over bytes on stderr when it is a terminal; a no-op otherwise."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.total, self.description = total, description
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total or None)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False
