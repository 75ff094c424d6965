"""Data-parallel search over configurations on CPU (gloo): two processes, spawned by the search
itself or started by torchrun, give exactly the store of one process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from search_helpers import spec_for, store_numbers

from tensorllm.search import Store, run_search
from tensorllm.search.dist import Claims, World, world_from_env


def test_claims_hand_each_index_to_exactly_one_rank(monkeypatch):
    one = Claims(World(), "val", 3)
    assert [one.next() for _ in range(5)] == [0, 1, 2, None, None] and one.left() == 0

    from torch.distributed import HashStore, distributed_c10d

    shared = HashStore()  # what the process group's store is to every rank
    monkeypatch.setattr(distributed_c10d, "_get_default_store", lambda: shared)
    ranks = [Claims(World(r, 3), "1/val", 7) for r in range(3)]
    other = Claims(World(0, 3), "2/val", 2)  # another phase: its own counter
    got: list[list[int]] = [[], [], []]
    for r in (0, 0, 2, 1, 0, 2, 2, 1, 0):  # ranks asking in some order, some after all are taken
        index = ranks[r].next()
        if index is not None:
            got[r].append(index)
    assert sorted(sum(got, [])) == list(range(7)) and got[0] == [0, 1, 4]
    assert ranks[1].left() == 0 and other.next() == 0

    from tensorllm.search.dist import run_index

    # two searches one after the other in the same 3-rank group: every rank agrees on 0, then on 1
    assert [run_index(World(r, 3)) for r in (2, 0, 1)] == [0, 0, 0]
    assert [run_index(World(r, 3)) for r in (1, 2, 0)] == [1, 1, 1]
    assert run_index(World()) == 0


def test_world_from_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert world_from_env() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == World(1, 2, 1, 2)


@pytest.fixture(scope="module")
def one_process(search_tiny, tmp_path_factory):
    store = tmp_path_factory.mktemp("dist") / "one"
    report = run_search(spec_for(search_tiny, store, layers="all"))
    return store, report


def test_two_spawned_gloo_processes_equal_one_process(search_tiny, tmp_path, one_process):
    store, report = one_process
    two = run_search(spec_for(search_tiny, tmp_path / "two", layers="all", gpus=2))
    assert store_numbers(tmp_path / "two") == store_numbers(store)
    assert two["roles"]["winner"]["key"] == report["roles"]["winner"]["key"]
    lines = [json.loads(line) for p in Store(tmp_path / "two").files() for line in p.read_text().splitlines()]
    keys = [(line["key"], line["split"]) for line in lines]
    assert (
        len(keys) == len(set(keys)) == len(store_numbers(store))
    )  # each evaluated once, by one rank or other
    assert (tmp_path / "two" / "heatmap.png").is_file()


def test_torchrun_resumes_a_partial_store_and_equals_one_process(search_tiny, tmp_path, one_process):
    store, _ = one_process
    run_search(spec_for(search_tiny, tmp_path / "s", layers="0"))  # part of the grid, by one process
    first = store_numbers(tmp_path / "s")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "tensorllm.cli",
        "search",
        search_tiny["model"],
        "--task",
        "wikidata_qa",
        "--data",
        search_tiny["data"],
        "--store",
        str(tmp_path / "s"),
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
        "--exhaustive",
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout[out.stdout.index("{") :])  # only rank 0 prints
    assert report["status"] == "complete"
    final = store_numbers(tmp_path / "s")
    assert all(final[k] == v for k, v in first.items())  # kept, not recomputed
    whole = store_numbers(store)
    assert {k: v for k, v in final.items() if k in whole} == whole
    assert set(final) - set(whole) <= set(first)  # beyond it: only the layer-0 search's own test lines


def test_device_map_helpers_on_a_cpu_machine(tiny_loaded):
    from tensorllm.base.devices import device_map_kwargs, input_device, is_dispatched
    from tensorllm.base.errors import UserError

    assert device_map_kwargs(None) == {}
    with pytest.raises(UserError):
        device_map_kwargs("everywhere")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            device_map_kwargs("auto")
    assert not is_dispatched(tiny_loaded.model)
    assert input_device(tiny_loaded.model).type == "cpu"


def test_the_scaling_bench_runs_fresh_stores_and_compares_them(search_tiny, tmp_path):
    bench = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "search_scaling.py")
    search = [
        search_tiny["model"],
        "--task",
        "wikidata_qa",
        "--data",
        search_tiny["data"],
        "--layers",
        "0",
        "--ranks",
        "8,4,2;auto",
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
        "--exhaustive",  # the scaling bench times the exhaustive search (its recorded GPU runs did)
    ]
    out = subprocess.run(
        [
            sys.executable,
            bench,
            "--root",
            str(tmp_path / "sc"),
            "--gpus",
            "1,2",
            "--out",
            str(tmp_path / "sc.json"),
            "--",
            *search,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(bench),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "sc.json").read_text())["rows"]
    assert [r["processes"] for r in rows] == [1, 2]
    assert all(r["identical_to_first"] and r["status"] == "complete" and r["results"] >= 3 for r in rows)
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] > 0
    for r in rows:  # every evaluation is counted on the rank that made it; rank 0's set-up is reported
        assert sum(r["evaluations_per_rank"].values()) == r["results"] and r["busiest_rank_seconds"] > 0
        assert set(r["setup_seconds"]) == {"start", "load", "task_check", "grid", "store"}
        assert {"tokenise", "generate", "judge", "loss"} <= set(r["eval_seconds_by_phase_per_rank"]["0"])
    assert (tmp_path / "sc" / "warmup" / "report.json").is_file()  # the untimed warm-up ran first
    again = subprocess.run(
        [sys.executable, bench, "--root", str(tmp_path / "sc"), "--", *search],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(bench),
    )
    assert again.returncode == 2 and "stores exist already" in again.stderr
