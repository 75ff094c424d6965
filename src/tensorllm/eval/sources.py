"""Where a task's records come from (a local JSON/JSONL file, BIG-bench, Hugging Face datasets),
and LASER's split: the first 20% of a dataset is validation, the remaining 80% is test.

Local files: a JSON list of records, a BIG-bench `task.json` (an object with `examples`), or JSON
Lines (one object per line). The record fields each task needs are listed in tasks.py.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from tensorllm.base.errors import UserError
from tensorllm.eval.tasks import Example, TaskSpec

SPLITS = ("val", "test", "all")


@dataclass(frozen=True)
class Dataset:
    task: str
    examples: tuple[Example, ...]
    source: str  # file path or built-in source name
    skipped: int  # records the task's rules dropped (e.g. WikidataQA items with several targets)


def split_examples(examples, split: str) -> list:
    """LASER: the first floor(n / 5) items (its `int(0.2 * n)`) are validation, the rest test."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    n_val = len(examples) // 5
    if split == "val":
        return list(examples[:n_val])
    if split == "test":
        return list(examples[n_val:])
    return list(examples)


def select(examples, split: str, limit: int | None, task: str = "") -> list:
    """The split, then its first `limit` items; an empty result is an error."""
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be a positive number of examples, got {limit}")
    chosen = split_examples(examples, split)
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise UserError(f"the {split} split of task '{task}' is empty ({len(examples)} examples in all)")
    return chosen


def load_task(task: TaskSpec, data: str | Path | None = None) -> Dataset:
    """All examples of a task, in source order, from `data` or the task's built-in source."""
    if data is not None:
        path = Path(data).expanduser()
        if path.is_dir():
            raise UserError(f"data file {path} is a directory; pass a JSON or JSON Lines file")
        if not path.is_file():
            raise UserError(f"data file {path} does not exist")
        st = path.stat()
        return _load_file(task, str(path.resolve()), st.st_mtime_ns, st.st_size)
    if task.builtin is None:
        raise UserError(
            f"task '{task.name}' has no built-in source; pass --data FILE (fields: {task.fields})"
        )
    return _load_builtin(task)


def _parse_all(task: TaskSpec, records, where: str) -> Dataset:
    examples, skipped = [], 0
    for loc, record in records:
        if not isinstance(record, dict):
            raise UserError(f"{where} {loc}: expected a JSON object, got {type(record).__name__}")
        try:
            ex = task.parse(record)
        except ValueError as exc:
            raise UserError(f"{where} {loc}: {exc}") from None
        if ex is None:
            skipped += 1
        else:
            examples.append(ex)
    if not examples:
        raise UserError(
            f"{where} holds no usable {task.name} examples (fields: {task.fields}; {skipped} skipped)"
        )
    return Dataset(task.name, tuple(examples), where, skipped)


@functools.lru_cache(maxsize=16)  # keyed by the file's mtime and size too: an edited file is re-read
def _load_file(task: TaskSpec, path: str, _mtime_ns: int, _size: int) -> Dataset:
    return _parse_all(task, read_records(Path(path)), path)


def read_records(path: Path) -> list[tuple[str, object]]:
    """[(location, record)] from a JSON list, a BIG-bench task.json, or a JSON Lines file.

    `.jsonl` files are always read line by line; other files as one JSON document first.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise UserError(f"data file {path} is empty")
    whole = None  # stays None for JSON Lines
    if path.suffix.lower() != ".jsonl":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("["):
                raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(whole, list):
        return _located(text, _skip(text, 0), "item")
    if isinstance(whole, dict) and isinstance(whole.get("examples"), list):
        return _located(text, _member(text, "examples"), "example")
    if whole is not None and not isinstance(whole, dict):
        raise UserError(f"{path}: expected JSON records, got a bare {type(whole).__name__}")
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {lineno}: not valid JSON ({exc.msg})") from None
    return records


_DECODER = json.JSONDecoder()


def _skip(text: str, pos: int, seps: str = "") -> int:
    """The first index at or after `pos` holding neither JSON whitespace nor one of `seps`."""
    while pos < len(text) and text[pos] in " \t\n\r" + seps:
        pos += 1
    return pos


def _located(text: str, start: int, what: str) -> list[tuple[str, object]]:
    """[("line L (item i)", value)] of the JSON array that opens at text[start], in a valid document."""
    out, line, counted = [], 1, 0
    pos = _skip(text, start + 1)
    while text[pos] != "]":
        value, end = _DECODER.raw_decode(text, pos)
        line += text.count("\n", counted, pos)
        counted = pos
        out.append((f"line {line} ({what} {len(out) + 1})", value))
        pos = _skip(text, end, ",")
    return out


def _member(text: str, key: str) -> int:
    """Where the value of the top-level `key` starts in a valid JSON object (the last one, as json.loads)."""
    found, pos = -1, _skip(text, _skip(text, 0) + 1)
    while text[pos] != "}":
        name, end = _DECODER.raw_decode(text, pos)
        pos = _skip(text, end, ":")
        if name == key:
            found = pos
        _, end = _DECODER.raw_decode(text, pos)
        pos = _skip(text, end, ",")
    return found


# -- built-in sources ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_builtin(task: TaskSpec) -> Dataset:
    kind, _, name = task.builtin.partition(":")
    if kind == "bigbench":
        return _parse_all(task, _bigbench_records(name), f"bigbench-1.0.0:{name}")
    return _parse_all(task, _hf_records(task, name), f"hf:{name}")


def _bigbench_records(name: str) -> list[tuple[str, object]]:
    from tensorllm.data.bigbench import bigbench_file

    path = bigbench_file(name)
    doc = json.loads(path.read_text(encoding="utf-8"))
    if name == "paragraphs":  # SQuAD layout: data[*].paragraphs[*].context; keep each paragraph once
        seen: dict[str, str] = {}
        for a, article in enumerate(doc["data"]):
            for p, para in enumerate(article["paragraphs"]):
                seen.setdefault(para["context"].strip(), f"article {a + 1} paragraph {p + 1}")
        return [(loc, {"text": text}) for text, loc in seen.items()]
    return [(f"example {i + 1}", r) for i, r in enumerate(doc["examples"])]


def _hf_records(task: TaskSpec, name: str) -> list[tuple[str, object]]:
    """LASER's Hugging Face datasets; needs `datasets` and a network (or its local HF cache)."""
    hint = f"pass --data FILE with fields {task.fields}"
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"task '{task.name}' reads Hugging Face datasets, which is not installed; {hint}"
        ) from None
    unreachable = _hub_unreachable()
    if unreachable:  # fail at once instead of after `datasets`' retries with back-off
        raise UserError(
            f"task '{task.name}' reads the Hugging Face Hub, which is unreachable ({unreachable}); {hint}"
        )
    try:
        if name == "fever":
            ds = datasets.load_dataset("EleutherAI/fever", "v1.0")
            records = []
            for split in ("paper_dev", "paper_test"):  # LASER: drop claims seen with conflicting labels
                labels: dict[str, set] = {}
                for row in ds[split]:
                    labels.setdefault(row["claim"], set()).add(row["label"])
                records += [
                    (f"{split} {c!r}", {"claim": c, "label": next(iter(ls))})
                    for c, ls in labels.items()
                    if len(ls) == 1
                ]
            return records
        if name == "hotpotqa":
            ds = datasets.load_dataset("hotpotqa/hotpot_qa", "fullwiki")
            n_val = len(ds["validation"])  # LASER: as many train items as validation has, then validation
            rows = [("train", ds["train"][i]) for i in range(n_val)] + [
                ("validation", r) for r in ds["validation"]
            ]
            return [
                (f"{s} item {i + 1}", {"question": r["question"], "answer": r["answer"]})
                for i, (s, r) in enumerate(rows)
            ]
        if name == "bios":
            ds = datasets.load_dataset("LabHC/bias_in_bios", split="dev")
            return [
                (f"dev item {i + 1}", {"hard_text": r["hard_text"], "profession": r["profession"]})
                for i, r in enumerate(ds)
            ]
    except UserError:
        raise
    except Exception as exc:  # offline, missing dataset, changed schema: all the same to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"cannot load the Hugging Face data of task '{task.name}' ({first}); {hint}"
        ) from None
    raise UserError(f"unknown built-in source hf:{name}")


def _hub_unreachable() -> str | None:
    """Why the Hub's host cannot be resolved, or None (also None in offline mode: the local cache serves)."""
    import os
    import socket
    import urllib.parse

    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return None
    try:
        from huggingface_hub import constants

        host = urllib.parse.urlsplit(constants.ENDPOINT).hostname
        if host:
            socket.getaddrinfo(host, 443)
    except OSError as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except ImportError:
        return None
    return None
