"""Two processes (or ranks of one search) that use a built-in alias for the first time at once: one
fetches it, the others wait on the cache lock and then find it; nothing is fetched twice."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from tensorllm.base.files import cache_lock
from tensorllm.models import aliases


def test_concurrent_first_uses_fetch_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORLLM_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_fetch(alias, final, downloads):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough that the other thread arrives while this one fetches
        final.mkdir(parents=True)
        (final / "config.json").write_text("{}")

    monkeypatch.setattr(aliases, "_fetch", fake_fetch)
    got: list = []
    threads = [
        threading.Thread(target=lambda: got.append(aliases.alias_path("smollm2-135m"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert got == [aliases.alias_dir("smollm2-135m")] * 3


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    lock = tmp_path / ".x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tensorllm.base.files import cache_lock\n"
            f"with cache_lock({str(lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        entered = threading.Event()

        def wait_for_it():
            with cache_lock(lock, "x"):
                entered.set()

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        assert not entered.wait(0.5)  # blocked while the holder runs
        holder.kill()
        assert entered.wait(10)  # the kernel released the lock with the killed holder
        waiter.join()
    finally:
        holder.kill()
        holder.wait()
