"""The fault suite (issue 12): what a hostile-but-realistic user, a full disk, a signal or a second
process does to every command that writes.

The contract of every bad input: exit code 2, exactly one line on stderr and it starts with
`error:`, no traceback, nothing new on disk, every input byte-for-byte as it was. Output problems
(a parent that is a file, a read-only or full file system, an output inside an input) are found
before any model is loaded; write errors during the save (ENOSPC, EROFS, EIO) are one line too,
with the temporary directory removed. SIGTERM and SIGINT remove the temporary directory and exit
143 / 130 with one line; stale temporary directories of ours are swept. A string that looks like a
path never reaches the hub, and a hub id without a network fails at once. Two searches never write
one store.

Tiny random models only (tests/conftest.py); real processes only where a signal or a second process
is the point.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers

from tensorllm.base.errors import UserError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
WORDS = [f"w{i}" for i in range(3, 40)]  # the conftest tokenizer's words


# ------------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict:
    """{relative path: content hash, or 'dir'} of everything under root, hidden files included."""
    import hashlib

    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_refused(rc: int, stdout: str, stderr: str, match: str) -> None:
    """Exit 2, one stderr line `error: ...` holding `match`, no traceback, nothing on stdout."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.splitlines()
    assert rc == 2, f"exit code {rc}; stderr: {stderr[-2000:]!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got {lines!r}"
    assert match in lines[0], lines[0]
    assert stdout == ""


def _line_words(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture
def work(tmp_path, tiny_ckpt) -> dict:
    """A working folder: a copy of the tiny Llama, calibration text, task files, an ordinary file."""
    import random

    rng = random.Random(0)
    model = Path(shutil.copytree(tiny_ckpt, tmp_path / "model"))
    (tmp_path / "text.txt").write_text("\n\n".join(_line_words(rng, 200) for _ in range(20)))
    (tmp_path / "task.jsonl").write_text(
        "".join(
            json.dumps({"input": _line_words(rng, 3), "target": rng.choice(WORDS)}) + "\n" for _ in range(20)
        )
    )
    (tmp_path / "qa.jsonl").write_text(
        "".join(
            json.dumps({"question": _line_words(rng, 3), "answer": rng.choice(WORDS)}) + "\n"
            for _ in range(20)
        )
    )
    (tmp_path / "a-file").write_text("an ordinary file")
    return {
        "root": tmp_path,
        "model": model,
        "text": tmp_path / "text.txt",
        "task": tmp_path / "task.jsonl",
        "qa": tmp_path / "qa.jsonl",
        "file": tmp_path / "a-file",
    }


# What each writing command is given; OUT is the output it writes (--out, --json or --store).
COMMANDS = {
    "compress": "compress {model} --out {out} --layers 0 --ranks 8,4,2 --device cpu",
    "expand-kv": "expand-kv {model} --out {out}",
    "gqa": "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --calib-tokens 256 --seq-len 32 "
    "--eval-tokens 64 --decode-tokens 0 --device cpu",
    "eval": "eval {model} --task hotpotqa --data {qa} --split all --limit 4 --batch-size 4 --device cpu "
    "--json {out}",
    "search": "search {model} --task wikidata_qa --data {task} --store {out} --layers 0 --ranks 8,4,2 "
    "--limit-val 2 --limit-test 2 --batch-size 4 --device cpu --threads 1",
    "demo": "demo --out {out} --eval-items 0",
    "export": "export {model} --dense --out {out}",  # the input's kind is checked after the output's
}


def command(name: str, work: dict, out: Path) -> list[str]:
    """The arguments of COMMANDS[name] (split before the paths go in, so a path may hold spaces)."""
    return [arg.format(out=out, **work) for arg in COMMANDS[name].split()]


DENSE = ("compress", "expand-kv", "gqa", "demo", "export")  # commands that write a checkpoint


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load (or built-in alias fetch) fails the test: what must happen before it, does."""
    from tensorllm.models import aliases, resolve

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(boom))
    monkeypatch.setattr(aliases, "alias_path", boom)
    monkeypatch.setattr(resolve, "alias_path", boom)


def _read_only_by_the_kernel(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Creating anything under `folder` fails as on a read-only mount (works as root too)."""
    prefix = str(folder) + os.sep
    real_open, real_mkdir = os.open, os.mkdir

    def guarded(real):
        def call(path, *args, **kwargs):
            if os.fspath(path).startswith(prefix):
                raise OSError(code, os.strerror(code), os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", guarded(real_open))
    monkeypatch.setattr(os, "mkdir", guarded(real_mkdir))


# ------------------------------------------------------------------ failure 1: output problems, found first


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_out_whose_parent_is_a_file_is_refused_before_loading(cmd, work, run_cli, no_model_loads):
    out = work["file"] / ("out.json" if cmd == "eval" else "out")
    before = snapshot(work["root"])
    rc, stdout, stderr = run_cli(*command(cmd, work, out))
    assert_refused(rc, stdout, stderr, f"{work['file']} is not a directory")
    assert snapshot(work["root"]) == before


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_out_on_a_read_only_file_system_is_refused_before_loading(
    cmd, work, run_cli, no_model_loads, monkeypatch
):
    ro = work["root"] / "ro"
    ro.mkdir()
    _read_only_by_the_kernel(monkeypatch, ro)
    out = ro / ("sub/out.json" if cmd == "eval" else "sub/out")
    before = snapshot(work["root"])
    rc, stdout, stderr = run_cli(*command(cmd, work, out))
    assert_refused(rc, stdout, stderr, f"cannot write into {ro} (Read-only file system)")
    assert snapshot(work["root"]) == before


@pytest.mark.skipif(IS_ROOT, reason="root writes into a 0o555 directory (the EROFS test above runs as root)")
@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_out_in_a_directory_without_write_permission_is_refused(cmd, work, run_cli, no_model_loads):
    ro = work["root"] / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        out = ro / ("out.json" if cmd == "eval" else "out")
        rc, stdout, stderr = run_cli(*command(cmd, work, out))
        assert_refused(rc, stdout, stderr, f"cannot write into {ro}")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("cmd", DENSE)
def test_not_enough_free_space_is_refused_before_loading(cmd, work, run_cli, monkeypatch, no_model_loads):
    from tensorllm.models.io import input_path

    if cmd == "demo" and not (input_path("smollm2-135m") / "config.json").is_file():
        pytest.skip("the demo's estimate needs the cached smollm2-135m checkpoint")
    usage = shutil.disk_usage(work["root"])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    before = snapshot(work["root"])
    rc, stdout, stderr = run_cli(*command(cmd, work, work["root"] / "out"))
    assert_refused(rc, stdout, stderr, "not enough free space for --out")
    assert "4.0 KiB free" in stderr
    assert snapshot(work["root"]) == before


@pytest.mark.parametrize("cmd", ["compress", "expand-kv", "gqa", "eval", "search", "export"])
def test_output_inside_the_input_is_refused_before_loading(cmd, work, run_cli, no_model_loads):
    out = work["model"] / ("eval.json" if cmd == "eval" else "out")
    before = snapshot(work["root"])
    rc, stdout, stderr = run_cli(*command(cmd, work, out))
    assert_refused(rc, stdout, stderr, "lies inside the input")
    assert snapshot(work["root"]) == before


@pytest.mark.parametrize("cmd", ["gqa", "demo"])
def test_existing_out_is_refused_before_loading(cmd, work, run_cli, no_model_loads):
    out = work["root"] / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = command(cmd, work, out) + (["--no-overwrite"] if cmd == "demo" else [])
    before = snapshot(work["root"])
    rc, stdout, stderr = run_cli(*args)
    assert_refused(rc, stdout, stderr, "already exists (pass --overwrite to replace it)")
    assert snapshot(work["root"]) == before


# ------------------------------------------------------------------ failure 1: errors while writing


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
@pytest.mark.parametrize("cmd", ["compress", "expand-kv", "gqa"])
def test_a_write_error_during_the_save_is_one_line_and_leaves_nothing(cmd, code, work, run_cli, monkeypatch):
    seen: list[Path] = []

    def save_pretrained(self, save_directory, *args, **kwargs):
        seen.append(Path(save_directory))
        (Path(save_directory) / "model.safetensors").write_bytes(b"partial")
        raise OSError(code, os.strerror(code), str(Path(save_directory) / "model.safetensors"))

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_pretrained)
    out = work["root"] / "out"
    before = snapshot(work["root"])
    rc, stdout, stderr = run_cli(*command(cmd, work, out))
    assert_refused(rc, "", stderr, f"cannot write {out.resolve()} ({os.strerror(code)})")
    assert seen and seen[0].parent == work["root"] and not seen[0].exists()  # the temporary sibling is gone
    assert snapshot(work["root"]) == before


def test_a_full_disk_during_a_search_append_is_one_line(work, run_cli, monkeypatch):
    import types

    from tensorllm.search import store as store_mod

    def write(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod, "os", types.SimpleNamespace(**{**vars(os), "write": write}))
    store = work["root"] / "store"
    rc, stdout, stderr = run_cli(*command("search", work, store))
    lines = stderr.splitlines()
    assert rc == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert lines[-1].startswith("error: ") and "No space left on device" in lines[-1], lines
    assert (store / "results-rank0.jsonl").read_bytes() == b""  # nothing half-appended


def test_a_full_disk_while_writing_the_search_report_is_one_line(work, run_cli, monkeypatch):
    from matplotlib.figure import Figure

    def savefig(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig)
    store = work["root"] / "store"
    rc, stdout, stderr = run_cli(*command("search", work, store))
    assert rc == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.splitlines()[-1] == f"error: cannot write {store / 'heatmap.png'} (No space left on device)"
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(".heatmap")) == []


def test_the_api_raises_a_user_error_for_a_failed_write(work, monkeypatch):
    import tensorllm

    loaded = tensorllm.load_model(str(work["model"]), device="cpu")

    def save_pretrained(self, save_directory, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_pretrained)
    with pytest.raises(UserError, match="No space left on device") as exc:
        tensorllm.save_checkpoint(loaded, work["root"] / "out")
    assert "\n" not in str(exc.value) and not (work["root"] / "out").exists()


# ------------------------------------------------------------------ failure 2: signals and stale temporaries

# The real CLI, with the checkpoint save held up once it has written a partial output, so the
# test can signal it in the middle of the write. argv: READY_FILE, then the tensorllm arguments.
SLOW_SAVE = """
import os, sys, time
from pathlib import Path
import transformers
real = transformers.PreTrainedModel.save_pretrained
def slow(self, save_directory, *args, **kwargs):
    real(self, save_directory, *args, **kwargs)
    Path(ready + ".part").write_text(str(save_directory))
    os.replace(ready + ".part", ready)  # the test polls for the file: never let it read it half-written
    time.sleep(300)
transformers.PreTrainedModel.save_pretrained = slow
ready, sys.argv = sys.argv[1], ["tensorllm"] + sys.argv[2:]
from tensorllm.cli import main
main()
"""


def _cli_env() -> dict:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError("the command ended before it was signalled: " + proc.stderr.read()[-3000:])
        assert time.time() < deadline, "the command never reached the save"
        time.sleep(0.05)


def test_sigterm_and_sigint_during_the_save_remove_the_temporary_directory(work):
    harness = work["root"] / "slow_save.py"
    harness.write_text(SLOW_SAVE)
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):  # both at once: the two interpreters start in parallel
        out, ready = work["root"] / f"out-{sig.name}", work["root"] / f"ready-{sig.name}"
        args = [sys.executable, str(harness), str(ready), *command("compress", work, out)]
        runs[sig] = (
            out,
            ready,
            subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_cli_env(),
                cwd=work["root"],
            ),
        )
    for sig, (out, ready, proc) in runs.items():
        _wait_for(ready, proc)
        tmp = Path(ready.read_text())
        assert tmp.name.startswith(f".{out.name}.tmp-") and (tmp / "model.safetensors").is_file()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, (proc.returncode, stderr[-2000:])
        assert stderr.splitlines() == [
            f"error: interrupted by {sig.name}; partial outputs removed (resumable runs keep their progress)"
        ]
        assert not tmp.exists() and not out.exists()
        assert [p.name for p in work["root"].iterdir() if p.name.startswith(f".{out.name}")] == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_temp(parent: Path, name: str, *, pid: int | None, age: float = 3600) -> Path:
    """A temporary output directory as a killed writer leaves it (with our marker when pid is given)."""
    from tensorllm.base.files import TEMP_MARKER

    tmp = parent / name
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half a model")
    if pid is not None:
        import socket

        (tmp / TEMP_MARKER).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    past = time.time() - age
    os.utime(tmp, (past, past))
    return tmp


def test_stale_temporary_directories_of_ours_are_swept_on_the_next_write(work, run_cli):
    root = work["root"]
    stale = _stale_temp(root, ".out.tmp-killed1", pid=_dead_pid())
    alive = _stale_temp(root, ".out.tmp-running", pid=os.getppid())  # a writer that is still running
    foreign = _stale_temp(root, ".out.tmp-notours", pid=None)  # no marker: not provably ours
    other = _stale_temp(root, ".other.tmp-killed", pid=_dead_pid())  # another output's: swept by its writer
    rc, stdout, stderr = run_cli(*command("compress", work, root / "out"))
    assert rc == 0, stderr
    assert not stale.exists() and alive.exists() and foreign.exists() and other.exists()
    assert f"removed {stale}, a temporary output left by pid" in stderr
    assert (root / "out" / "model.safetensors").is_file()
    from tensorllm.base.files import TEMP_MARKER

    assert not (root / "out" / TEMP_MARKER).exists()  # the marker never reaches the result


# ------------------------------------------------------------------ failure 3: model strings


@pytest.fixture
def hub_untouched(monkeypatch):
    """Handing a model string to transformers (which would ask the hub) fails the test."""

    def boom(*args, **kwargs):
        raise AssertionError("the model string was sent to transformers / the hub")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", boom)


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            "runs/l9-typo",
            "model 'runs/l9-typo' not found: runs/l9-typo does not exist (did you mean runs/l9?)",
        ),
        ("runs/l9/", "no config.json"),
        ("./l9", "model './l9' not found: l9 does not exist"),
        ("runs/sub/deeper", "model 'runs/sub/deeper' not found"),
        ("no-dir/model", None),  # one slash, first part missing: a hub id (offline here: one line, at once)
        ("a/b/c", "model 'a/b/c' not found: a/b/c does not exist"),
        ("~/tensorllm-no-such-dir", "does not exist"),
        ("smollm2-135", "not found: not a directory, .gguf file, hub id or alias ("),
    ],
)
@pytest.mark.parametrize("cmd", ["eval", "info", "compress"])
def test_a_mistyped_local_path_is_never_sent_to_the_hub(
    cmd, spec, match, work, run_cli, hub_untouched, monkeypatch
):
    monkeypatch.chdir(work["root"])
    (work["root"] / "runs" / "l9").mkdir(parents=True)
    args = {
        "eval": f"eval {spec} --task hotpotqa --data {work['qa']}",
        "info": f"info {spec}",
        "compress": f"compress {spec} --out runs/out --layers 0 --ranks 8,4,2",
    }[cmd].split()
    before = snapshot(work["root"])
    t0 = time.perf_counter()
    rc, stdout, stderr = run_cli(*args)
    assert_refused(rc, stdout, stderr, match or "HF_HUB_OFFLINE")
    if spec == "smollm2-135":
        assert stderr.rstrip().endswith("(did you mean smollm2-135m?)")
    assert time.perf_counter() - t0 < 15  # not the hub client's ~25 s of retries
    assert snapshot(work["root"]) == before


def test_a_hub_id_without_a_network_fails_in_one_line_at_once(tmp_path, run_cli, hub_untouched, monkeypatch):
    """HF_HUB_OFFLINE unset and the hub unreachable: one line within seconds, without handing the id to
    transformers (whose hub client retries for ~25 s, a warning per retry: seen before this check)."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as held:  # a local port bound (no other process takes it), never listening:
        held.bind(("127.0.0.1", 0))  # a connection is refused, the hub "is down"
        port = held.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        t0 = time.perf_counter()
        rc, stdout, stderr = run_cli("info", "tllm-test/not-there")
    assert_refused(rc, stdout, stderr, f"needs http://127.0.0.1:{port}, which cannot be reached")
    assert "not in the hub cache" in stderr
    assert time.perf_counter() - t0 < 15  # not the hub client's ~25 s of retries


# ------------------------------------------------------------------ one writer per store

# The real CLI with every evaluation held up, so a second search can be started beside it.
SLOW_SEARCH = """
import sys, time
import tensorllm.search.runner as runner
real = runner.Search._evaluate
def slow(self, *args, **kwargs):
    line = real(self, *args, **kwargs)
    time.sleep(300)
    return line
runner.Search._evaluate = slow
sys.argv = ["tensorllm"] + sys.argv[1:]
from tensorllm.cli import main
main()
"""


def _result_pairs(store: Path) -> list[tuple]:
    """(key, split, part) of every result line of a store, asserting each occurs once."""
    pairs = [
        (line["key"], line["split"], json.dumps(line.get("part"), sort_keys=True))
        for path in sorted(store.glob("results-rank*.jsonl"))
        for line in map(json.loads, path.read_text().splitlines())
    ]
    assert len(pairs) == len(set(pairs)), pairs
    return pairs


def _no_load(*args, **kwargs):
    raise AssertionError("the second search loaded the model before it found the lock")


def test_a_second_search_on_a_store_refuses_in_one_line(work, run_cli):
    harness = work["root"] / "slow_search.py"
    harness.write_text(SLOW_SEARCH)
    store = work["root"] / "store"
    args = [*command("search", work, store)]
    first = subprocess.Popen(
        [sys.executable, str(harness), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_cli_env(),
        cwd=work["root"],
    )
    try:
        results = store / "results-rank0.jsonl"
        deadline = time.time() + 120
        while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() < deadline, "the first search made no progress"
            time.sleep(0.05)
        owner = json.loads((store / ".lock").read_text())
        assert owner["pid"] == first.pid
        before = snapshot(work["root"])
        with pytest.MonkeyPatch.context() as m:  # the second search, in this process, refused before loading
            m.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(_no_load))
            rc, stdout, stderr = run_cli(*args)
        assert_refused(
            rc,
            stdout,
            stderr,
            f"another search is running on store {store} (pid {first.pid}",
        )
        assert snapshot(work["root"]) == before  # the second one wrote nothing
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
        assert first.returncode == 143 and stderr.splitlines()[-1].startswith("error: interrupted by SIGTERM")
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    kept = _result_pairs(store)
    rc, _, stderr = run_cli(*args)  # the lock is free again: the rerun resumes and finishes
    assert rc == 0, stderr
    after = _result_pairs(store)  # each (configuration, split) once
    assert len(kept) >= 1 and set(kept) <= set(after)
    assert json.loads((store / "report.json").read_text())["status"] == "complete"


def test_a_lock_left_by_a_killed_search_is_taken_over(work, run_cli):
    import socket

    store = work["root"] / "store"
    store.mkdir()
    dead = _dead_pid()
    (store / ".lock").write_text(
        json.dumps({"pid": dead, "host": socket.gethostname(), "started": "earlier"})
    )
    rc, _, stderr = run_cli(*command("search", work, store))
    assert rc == 0, stderr
    assert f"took over the lock of pid {dead}" in stderr
    assert (store / ".lock").read_text() == ""  # released at the end


def test_without_flock_the_pid_in_the_lock_decides(tmp_path, monkeypatch):
    """On a file system without flock (some network mounts) a live owner still keeps a second out."""
    import socket

    from tensorllm.search import store as store_mod
    from tensorllm.search.identity import IDENTITY_KEYS
    from tensorllm.search.store import Store

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(store_mod.fcntl, "flock", no_flock)
    ident = {k: f"v-{k}" for k in IDENTITY_KEYS if k != "method_versions"}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        root = tmp_path / "s"
        root.mkdir()
        (root / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(
            UserError, match=f"another search is running on store {root} \\(pid {sleeper.pid}"
        ):
            Store(root).open(ident, {})
    finally:
        sleeper.kill()
        sleeper.wait()
    store = Store(root)  # the owner is gone now: taken over
    assert "took over the lock" in (store.lock() or "")
    store.open(ident, {})
    assert json.loads((root / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(UserError, match="another search is running"):
        Store(root).open(ident, {})  # this process holds it
    store.close()
    assert (root / ".lock").read_text() == ""


def test_a_multi_process_search_checks_the_lock_before_spawning(work, monkeypatch):
    from tensorllm.search import dist, run_search
    from tensorllm.search.runner import SearchSpec
    from tensorllm.search.store import Store

    monkeypatch.setattr(dist, "spawn", lambda *a, **k: pytest.fail("spawned while the store was locked"))
    store = Store(work["root"] / "store")
    store.lock()
    try:
        spec = SearchSpec(
            model=str(work["model"]),
            task="wikidata_qa",
            store=str(work["root"] / "store"),
            data=str(work["task"]),
            options={"ranks": [(8, 4, 2)]},
            layers="0",
            device="cpu",
            gpus=2,
            limit_val=2,
            limit_test=2,
        )
        with pytest.raises(UserError, match="another search is running on store"):
            run_search(spec)
    finally:
        store.close()


# ------------------------------------------------------------------ bad input, command by command
#
# The contract of every bad input (see the module docstring), over the inputs each command takes.
# Many more already live beside the code they check, with the same assertions: model files, ranks,
# rates, layers and recipes of `compress` (tests/test_models_io.py), data files and --json of `eval`
# (tests/eval/test_eval_cli.py), identities and data of `search` (tests/search/test_cli.py). This
# table adds the commands and inputs those do not reach: gqa options, expand-kv, info, demo, search
# stores and resumes, recipe files, and the model strings and outputs every command shares.


def _damaged(work: dict, name: str, damage) -> Path:
    path = Path(shutil.copytree(work["model"], work["root"] / name))
    damage(path / "model.safetensors")
    return path


def _truncate(weights: Path) -> None:
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) * 6 // 10])


def _nan(weights: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(weights)
    sd["model.layers.1.mlp.up_proj.weight"].view(-1)[3] = float("nan")
    save_file(sd, weights, metadata={"format": "pt"})


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _store_with(files: dict):
    def make(work: dict, name: str) -> Path:
        root = work["root"] / name
        root.mkdir()
        for rel, text in files.items():
            (root / rel).write_text(text)
        return root

    return make


# {placeholder: what to make for it}; only the placeholders a case names are made
INPUTS = {
    "truncated": lambda w, n: _damaged(w, n, _truncate),
    "nan": lambda w, n: _damaged(w, n, _nan),
    "gpt2": lambda w, n: w["tiny"].save(w["root"] / n, "gpt2"),
    "empty": lambda w, n: _file(w["root"] / n, "\n\n  \n"),
    "bad_yaml": lambda w, n: _file(w["root"] / n, "steps: [unclosed\n"),
    "bad_manifest": _store_with({"store.json": "{not json"}),
    "foreign_dir": _store_with({"notes.txt": "mine"}),
    "no_store": lambda w, n: w["root"] / n,
}

BAD_INPUTS = [
    # gqa: its options, its calibration text, its model
    ("gqa", "gqa {model} --kv-heads 3 --out {out} --calib-file {text} --device cpu", "does not divide"),
    ("gqa", "gqa {model} --kv-heads 0 --out {out} --calib-file {text}", "gqa.kv_heads must be at least 1"),
    ("gqa", "gqa {model} --kv-heads 1 --grouping best --out {out} --calib-file {text}", "not one of"),
    (
        "gqa",
        "gqa {model} --kv-heads 1 --out {out} --calib-file {root}/missing.txt --device cpu",
        "calibration file",
    ),
    (
        "gqa",
        "gqa {model} --kv-heads 1 --out {out} --calib-file {empty} --device cpu",
        "the calibration text is empty",
    ),
    (
        "gqa",
        "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --calib-tokens 100000 --device cpu",
        "too short",
    ),
    (
        "gqa",
        "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --eval-tokens 1",
        "eval_tokens must be at least 2",
    ),
    (
        "gqa",
        "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --decode-tokens -1",
        "decode_tokens must be 0 (skip) or more",
    ),
    (
        "gqa",
        "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --seq-len 1",
        "gqa.seq_len must be at least 2",
    ),
    (
        "gqa",
        "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --train-steps -1",
        "gqa.train_steps must be 0 or more",
    ),
    ("gqa", "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --lr-schedule wavy", "wavy"),
    ("gqa", "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --train-precision fp8", "fp8"),
    (
        "gqa",
        "gqa {model} --kv-heads 1 --out {out} --calib-file {text} --train-scope everything",
        "everything",
    ),
    ("gqa", "gqa {truncated} --kv-heads 1 --out {out} --calib-file {text}", "corrupt safetensors"),
    ("gqa", "gqa {nan} --kv-heads 1 --out {out} --calib-file {text} --device cpu", "contain NaN or Inf"),
    (
        "gqa",
        "gqa {gpt2} --kv-heads 1 --out {out} --calib-file {text} --device cpu",
        "no separate K/V projections",
    ),
    # expand-kv
    ("expand-kv", "expand-kv {truncated} --out {out}", "corrupt safetensors"),
    ("expand-kv", "expand-kv {nan} --out {out}", "contain NaN or Inf"),
    ("expand-kv", "expand-kv {model} --out {out} --dtype float8", "unknown dtype 'float8'"),
    ("expand-kv", "expand-kv {model} --out {model}/mha", "lies inside the input"),
    # info
    ("info", "info {truncated}", "corrupt safetensors"),
    ("info", "info {root}/no-such-model", "does not exist"),
    ("info", "info {file}", "is neither a checkpoint directory nor a .gguf file"),
    # demo (all before the real model is loaded)
    ("demo", "demo --out {out} --ranks 288,four,4", "ranks"),
    # compress: recipe files
    ("compress", "compress {model} --out {out} --recipe {root}/missing.yaml", "missing.yaml"),
    ("compress", "compress {model} --out {out} --recipe {bad_yaml}", "is not valid YAML"),
    ("compress", "compress {model} --out {out} --recipe {root}", "is a directory"),
    # eval: outputs and options
    ("eval", "eval {model} --task hotpotqa --data {qa} --json {qa}", "lies inside the input"),
    ("eval", "eval {model} --task hotpotqa --data {qa} --dtype float8", "unknown dtype 'float8'"),
    ("eval", "eval {model} --task hotpotqa --data {qa} --batch-size 0", "--batch-size must be positive"),
    # search: stores and resumes
    ("search", COMMANDS["search"].replace("{out}", "{file}"), "exists and is not a directory"),
    ("search", COMMANDS["search"].replace("{out}", "{bad_manifest}"), "is not valid JSON"),
    (
        "search",
        COMMANDS["search"].replace("{out}", "{foreign_dir}"),
        "non-empty directory without store.json",
    ),
    ("search", COMMANDS["search"].replace("{out}", "{model}/store"), "lies inside the input"),
    ("search", COMMANDS["search"] + " --gpus 0", "must be >= 1"),
    ("search", COMMANDS["search"] + " --time-budget 0", "--time-budget must be positive"),
    (
        "search",
        COMMANDS["search"].replace(
            "--layers 0 --ranks 8,4,2", "--method hybrid --from {no_store} --from {no_store}"
        ),
        "is not a search store",
    ),
]


@pytest.mark.parametrize(
    "cmd, args, match", BAD_INPUTS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_INPUTS)]
)
def test_bad_input(cmd, args, match, work, tiny, run_cli):
    import string

    names = {name for _, name, _, _ in string.Formatter().parse(args) if name}
    made = {name: INPUTS[name]({**work, "tiny": tiny}, name) for name in names if name in INPUTS}
    out = work["root"] / "out"
    argv = [arg.format(out=out, **work, **made) for arg in args.split()]
    before = snapshot(work["root"])
    rc, stdout, stderr = run_cli(*argv)
    assert_refused(rc, stdout, stderr, match)
    assert snapshot(work["root"]) == before  # nothing new on disk, every input as it was
