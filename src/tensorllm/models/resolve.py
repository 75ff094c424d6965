"""MODEL string -> where it lives, checked before anything loads.

A built-in alias, a local Hugging Face directory (config.json + intact safetensors, or pickle weights
only with allow_pickle), a `.gguf` file, or a hub id. A string that looks like a path is never sent to
the hub: one that starts with `.`, `/` or `~`, has more than one `/`, or whose first part exists
(`runs/l9-typo` with a `runs/` folder here) is a local path or a one-line "not found" (with a
"did you mean"). A hub id is checked before transformers sees it: offline (HF_HUB_OFFLINE) it must be
in the hub cache, and an unreachable hub fails at once instead of after half a minute of retries.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

from tensorllm.base.errors import UserError, one_line
from tensorllm.models.aliases import ALIASES, alias_path

# huggingface_hub's repo ids: owner/name of letters, digits, `-`, `_`, `.`, no `--` or `..`
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9_.][\w.-]{0,95}")
HUB_PROBE_SECONDS = 3.0


def _check_local_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            if not allow_pickle:
                raise UserError(
                    f"{path} holds only pickle (.bin) weights; pass --allow-pickle to load them "
                    "(pickle can run arbitrary code)"
                )
            return
        raise UserError(f"{path} holds no weights (*.safetensors)")
    from safetensors import safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                keys = list(f.keys())
                if keys:
                    f.get_slice(keys[-1])
        except Exception as exc:  # safetensors raises several types for a damaged header
            raise UserError(f"corrupt safetensors file {shard}: {one_line(exc)}") from None
        size = shard.stat().st_size
        header_len, header = safetensors_header(shard)
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise UserError(
                f"corrupt safetensors file {shard}: {size} bytes on disk, header describes "
                f"{8 + header_len + end} (truncated or padded)"
            )


def safetensors_header(shard: Path) -> tuple[int, dict]:
    with open(shard, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        return header_len, json.loads(fh.read(header_len))


def _is_hub_id(spec: str) -> bool:
    """owner/name, and not a path: no `.`/`/`/`~` start, one `/`, and no folder here named like its owner."""
    return (
        HUB_ID.fullmatch(spec) is not None
        and "--" not in spec
        and ".." not in spec
        and not spec.endswith(".")
        and not Path(spec.split("/")[0]).exists()
    )


def _did_you_mean(path: Path) -> str:
    """' (did you mean X?)' for the first missing part of `path`, from the names in the folder above it."""
    parts = path.parts
    for i in range(1, len(parts) + 1):
        head = Path(*parts[:i])
        if not head.exists():
            folder = head.parent
            try:
                names = [p.name for _, p in zip(range(1000), folder.iterdir())]
            except OSError:
                return ""
            close = difflib.get_close_matches(head.name, names, n=1, cutoff=0.4)
            return f" (did you mean {folder / close[0]}?)" if close else ""
    return ""


def resolve_model(spec: str, allow_pickle: bool) -> tuple[Path | None, str | None]:
    """MODEL string -> (local directory or None for a hub id, gguf file name or None)."""
    if spec in ALIASES:
        return alias_path(spec), None
    return resolve_local(spec, allow_pickle)


def resolve_local(spec: str, allow_pickle: bool) -> tuple[Path | None, str | None]:
    """resolve_model without fetching an alias: a typo is a UserError here, nothing goes to the hub."""
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"model file {p} does not exist")
        return p.parent, p.name
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{p} is neither a checkpoint directory nor a .gguf file")
        if not os.access(p, os.R_OK | os.X_OK):
            raise UserError(f"model directory {p} is not readable")
        _check_local_dir(p, allow_pickle)
        return p, None
    if _is_hub_id(spec):
        return None, None  # a hub id: checked by hub_kwargs, then resolved by transformers
    if "/" in spec or os.sep in spec or spec.startswith((".", "~")):
        raise UserError(f"model '{spec}' not found: {p} does not exist{_did_you_mean(p)}")
    close = difflib.get_close_matches(spec, list(ALIASES), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(
        f"model '{spec}' not found: not a directory, .gguf file, hub id or alias ({', '.join(ALIASES)}){hint}"
    )


def _unreachable(endpoint: str) -> str | None:
    """Why `endpoint` cannot be reached within a few seconds (None: a TCP connection opened). A thread,
    so that a name lookup that hangs cannot hold the command up either."""
    import socket

    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
            result.append(None)
        except OSError as exc:
            result.append(exc.strerror or str(exc) or type(exc).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 0.5)
    return result[0] if result else f"no answer within {HUB_PROBE_SECONDS:g} s"


def hub_kwargs(spec: str) -> dict:
    """Before a hub id goes to transformers (whose hub client retries for ~25 s, a dozen warnings long):
    offline, it must be in the hub cache; online, the hub must answer, or the cache is used."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(spec, "config.json"), str)
    except ValueError:  # huggingface_hub's HFValidationError: not a repo id it accepts
        cached = False
    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    where = f"model '{spec}' is no local path or alias"
    if offline:
        if not cached:
            raise UserError(
                f"{where}, and as a hub id it is not in the hub cache ({constants.HF_HUB_CACHE}); "
                "HF_HUB_OFFLINE is set, so it is not downloaded"
            )
        return {}
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return {}  # through a proxy a direct connection says nothing: transformers finds out itself
    reason = _unreachable(constants.ENDPOINT)
    if reason is None:
        return {}
    if cached:
        return {"local_files_only": True}
    raise UserError(
        f"{where}; as a hub id it needs {constants.ENDPOINT}, which cannot be reached ({reason}), "
        "and it is not in the hub cache"
    )
