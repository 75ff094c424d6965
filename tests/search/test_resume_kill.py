"""Kill a search with SIGKILL in the middle, rerun the same command: every configuration ends up in
the store exactly once, nothing finished is recomputed, and the numbers equal an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time

from search_helpers import spec_for, store_numbers

from tensorllm.search import run_search

# Runs the real CLI with every evaluation followed by a pause, so the test can kill it mid-run.
HARNESS = """
import sys, time
import tensorllm.search.runner as runner
delay = float(sys.argv[1])
real = runner.Search._evaluate
def slow(self, *args, **kwargs):
    line = real(self, *args, **kwargs)
    time.sleep(delay)
    return line
runner.Search._evaluate = slow
sys.argv = ["tensorllm"] + sys.argv[2:]
from tensorllm.cli import main
main()
"""


def cli_args(tiny, store):
    return [
        "search",
        tiny["model"],
        "--task",
        "wikidata_qa",
        "--data",
        tiny["data"],
        "--store",
        str(store),
        "--method",
        "tucker",
        "--layers",
        "all",
        "--ranks",
        "8,4,2;0.5,0.5,1;auto",
        "--limit-val",
        "8",
        "--limit-test",
        "10",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--exhaustive",  # the exhaustive search's resume; tests/search/test_racing.py resumes a race
    ]


def _lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_mid_run_then_resume(search_tiny, tmp_path):
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    store = tmp_path / "killed"
    results = store / "results-rank0.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(harness), "0.5", *cli_args(search_tiny, store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 90
    while _lines(results) < 3:
        assert proc.poll() is None, (
            "the search ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        )
        assert time.time() < deadline, "the search made no progress"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = store_numbers(store)
    assert len(before) >= 3

    resumed = subprocess.run(
        [sys.executable, str(harness), "0", *cli_args(search_tiny, store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(before)} of " in resumed.stderr and "already in the store" in resumed.stderr
    after = store_numbers(store)  # asserts each (configuration, split) occurs once
    assert all(after[k] == v for k, v in before.items())
    report = json.loads((store / "report.json").read_text())
    assert report["status"] == "complete"
    assert report["run"]["evaluated_this_run"] == len(after) - len(before)  # only what was missing

    reference = tmp_path / "uninterrupted"
    run_search(spec_for(search_tiny, reference, layers="all", ranks=((8, 4, 2), (0.5, 0.5, 1.0), "auto")))
    assert after == store_numbers(reference)
