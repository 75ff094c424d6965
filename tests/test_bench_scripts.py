"""The benchmark scripts run at toy size on the CPU (they are timed on the GPU, never in tests),
so that a change in the library cannot leave them broken until the next GPU session; the GPU call
scripts parse and stage through one helper, and every raw result folder says which claim it backs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{script}.json"
    flag = "--json" if script == "tucker_7b.py" else "--out"
    subprocess.run(
        [sys.executable, str(BENCH / script), *args, flag, str(out)],
        check=True,
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.read_text())


def test_tucker_7b_both_starts_reach_the_same_decomposition(tmp_path):
    tiny = [
        "--device",
        "cpu",
        "--layers",
        "2",
        "--hidden",
        "256",
        "--heads",
        "4",
        "--compute-dtype",
        "float32",
    ]
    runs = {
        start: _run("tucker_7b.py", *tiny, "--start", start, tmp_path=tmp_path)["runs"][0]
        for start in ("library", "full-hosvd")
    }
    lib, full = runs["library"], runs["full-hosvd"]
    assert lib["total_sweeps"] == full["total_sweeps"] > 0
    errors = [[layer["final_error"] for layer in r["layers"]] for r in (lib, full)]
    assert errors[0] == pytest.approx(errors[1], abs=1e-6) and all(0 < e < 1 for e in errors[0])


@pytest.mark.slow
def test_gqa_decode_times_both_models_in_their_own_processes(tmp_path):
    result = _run(
        "gqa_decode.py",
        "--small",
        "--new-tokens",
        "4",
        "--repeats",
        "1",
        "--parallel",
        "--child-timeout",
        "600",
        tmp_path=tmp_path,
    )
    assert result["original"]["kv_heads"] == 8 and result["converted"]["kv_heads"] == 2
    assert (
        result["converted"]["kv_cache_bytes_per_token"] * 4 == result["original"]["kv_cache_bytes_per_token"]
    )
    paths = {"default", "static", "static_gqa", "static_packed", "static_flex"}
    assert set(result["speedup"]) == paths | {"best_vs_best"} and result["exit_codes"] == {
        "original": 0,
        "converted": 0,
    }
    assert all(result["speedup"][p] > 0 for p in paths) and result["speedup"]["best_vs_best"]["speedup"] > 0
    assert "static_packed" not in result["original"]  # multi-head: the packed path is SDPA's, timed once


@pytest.mark.slow
def test_gqa_decode_loop_driver_times_the_static_paths_without_generate(tmp_path):
    result = _run(
        "gqa_decode.py",
        "--small",
        "--new-tokens",
        "3",
        "--repeats",
        "1",
        "--driver",
        "loop",
        "--paths",
        "gqa,static",
        tmp_path=tmp_path,
    )
    assert set(result["converted"]) >= {"loop_gqa", "loop"} and "loop_gqa" not in result["original"]
    assert (
        result["converted"]["loop_gqa"]["steps_timed"] == 3
        and "tokens" not in result["converted"]["loop_gqa"]
    )
    assert set(result["speedup"]) == {"loop_gqa", "loop", "best_vs_best"}


@pytest.mark.real
def test_auto_ranks_speed_compares_both_routes_on_the_real_model(smollm2, tmp_path):
    result = _run("auto_ranks_speed.py", tmp_path=tmp_path)
    assert result["layers_modes_with_different_rank"] == [] and result["svdvals_seconds"] > 0
    assert result["gram_seconds"] > 0


@pytest.mark.real
def test_closed_gates_ab_runs_both_ways_with_the_same_kl(smollm2, tmp_path):
    result = _run(
        "gqa_closed_gates.py",
        "--steps",
        "2",
        "--batch",
        "1",
        "--seq-len",
        "32",
        "--repeats",
        "1",
        tmp_path=tmp_path,
    )
    assert [r["shortcut"] for r in result["runs"]] == [True, False] and result["same_kl"]


@pytest.mark.slow
def test_factorised_speed_times_both_paths_at_toy_size(tmp_path):
    result = _run("factorised_speed.py", "--small", "--new-tokens", "2", "--prefill", "16", tmp_path=tmp_path)
    rates = {r["rate"] for r in result["projections"]}
    assert rates == {2, 3, 5, 10, 20, 50} and all(r["factorised_ms"] > 0 for r in result["projections"])
    assert all(r["factor_bytes"] < r["dense_weight_bytes"] for r in result["projections"])
    models = result["models"]
    assert [m["rate"] for m in models] == [1, 2, 3, 5, 10, 20, 50]
    assert all(m["weights_bytes"] < models[0]["weights_bytes"] for m in models[1:])  # measured, not computed
    assert set(result["crossover"]) == {"tiny decode_b1", "tiny decode_b16", "tiny prefill_16"}


@pytest.mark.slow
def test_size_quality_runs_every_method_with_and_without_recovery(tmp_path, tiny):
    ckpt = tiny.save(tmp_path / "tiny", "llama")
    result = _run(
        "size_quality.py",
        "--model",
        str(ckpt),
        "--small",
        "--plot",
        str(tmp_path / "p.png"),
        tmp_path=tmp_path,
    )
    rows = result["rows"]
    assert {(r["method"], r["recover_steps"]) for r in rows} == {
        (m, s) for m in ("svd", "svd_whitened", "tucker", "tucker_calibrated") for s in (0, 2)
    }
    assert all(r["params"] < result["original"]["params"] and r["perplexity"] > 0 for r in rows)
    assert all(r["file_bytes"] < result["original"]["file_bytes"] for r in rows)
    assert (tmp_path / "p.png").stat().st_size > 0


def test_attn_decode_micro_kernels_agree_with_float32_attention(tmp_path):
    result = _run("attn_decode_micro.py", "--small", tmp_path=tmp_path)
    rows = result["rows"]
    assert set(rows) == {"mha", "packed", "gqa_native"} and all("error" not in r for r in rows.values())
    assert rows["packed"]["max_abs_err_vs_fp32"] < 1e-5 and rows["gqa_native"]["max_abs_err_vs_fp32"] < 1e-5


GPU = BENCH / "gpu"
STAGING = (".m1/part.aa", ".m2/part.ab", "stage_gguf_alias.py", ".whl/*.whl", ".tc/")  # stage.sh's lines


def test_gpu_scripts_parse_and_stage_through_the_one_helper():
    scripts = sorted(GPU.glob("*.sh"))
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True, capture_output=True, text=True)
    calls = [s for s in scripts if s.name not in {"env.sh", "stage.sh", "prepare.sh"}]
    assert calls and "source bench/gpu/env.sh" in (GPU / "stage.sh").read_text()
    index = (GPU / "README.md").read_text()
    for script in calls:
        code = [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert code[0].startswith("source bench/gpu/stage.sh"), script.name
        assert not any(s in line for line in code for s in STAGING), f"{script.name} repeats staging lines"
        assert f"`{script.name}`" in index, f"{script.name} missing from bench/gpu/README.md"


def test_result_folders_say_what_they_back_and_links_resolve():
    root = BENCH.parent
    folders = [p for p in (BENCH / "results").iterdir() if p.is_dir()]
    assert folders and not [p for p in (BENCH / "results").iterdir() if p.is_file()]  # no loose files
    for folder in folders:
        readme = (folder / "README.md").read_text()
        assert "BENCHMARKS.md" in readme and "measured:" in readme and "device:" in readme, folder.name
        for script in re.findall(r"bench/gpu/[\w.]+\.sh", readme):
            assert (root / script).exists(), f"{folder.name}/README.md: {script}"
    for doc in ("BENCHMARKS.md", "README.md", "bench/gpu/README.md"):
        text = (root / doc).read_text()
        links = [(root / doc).parent / t for t in re.findall(r"\]\(([^)#\s:]+)\)", text)]
        paths = [root / t.rstrip(".,") for t in re.findall(r"(?<![\w/.$])bench/[\w./-]+", text)]
        assert not [str(p) for p in links + paths if not p.exists()], doc


def test_search_replay_races_a_complete_grid(tmp_path):
    """A synthetic exhaustive store with per-item results (one configuration clearly best)."""
    import random

    rng = random.Random(0)
    store, n = tmp_path / "store", 400
    store.mkdir()
    (store / "store.json").write_text(json.dumps({"task": "wikidata_qa", "method": "tucker", "info": {}}))
    rows = []
    for i, rate in enumerate([0.2] + [0.1 + 0.01 * j for j in range(11)] + [0.45]):
        bits = "".join("1" if rng.random() < rate else "0" for _ in range(n))
        nll = [round(rng.random() + 2, 4) for _ in range(n)]
        rows.append(
            {
                "key": f"k{i:02d}",
                "split": "val",
                "steps": [] if i == 0 else [{"method": "tucker", "layers": [i]}],
                "describe": f"config {i}",
                "n": n,
                "accuracy": 100.0 * bits.count("1") / n,
                "loss": sum(nll) / n,
                "eval": {"metric": "generate-substring", "answer_mode": "faithful"},
                "items": {"faithful": bits, "continuation": bits, "exact": bits, "nll": nll},
            }
        )
    (store / "results-rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _run("search_replay.py", str(store), "--race-alpha", "0.01,0.05", tmp_path=tmp_path)
    (s,) = result["stores"]
    assert s["configurations"] == 12 and s["n"] == n and len(s["replays"]) == 2
    assert all(r["same_winner"] and r["winner"] == "k12" and r["fraction"] < 0.6 for r in s["replays"])
    assert result["default_params_same_winner_everywhere"]


def test_stream_bench_measures_and_matches_the_in_memory_path_at_toy_size(tmp_path):
    # tucker and gqa: the two streamed paths of different kinds (LASER streams as Tucker does; the
    # library's streamed LASER is compared with the in-memory one in tests/test_streamed.py)
    args = ("--shapes", "tiny", "--methods", "tucker,gqa", "--device", "cpu", "--compare")
    result = _run("stream_bench.py", *args, "--dir", str(tmp_path / "work"), tmp_path=tmp_path)
    row = result["shapes"]["tiny"]
    for method in ("tucker", "gqa"):
        run = row[method]
        assert "error" not in run and run["peak_rss_bytes"] > 0 and run["psutil_peak_rss_bytes"] > 0
        assert all(run[k] >= 0 for k in ("read_s", "compute_s", "write_s", "copy_s"))
        assert 0 < run.get("mean_rel_error", run.get("mean_key_energy_kept")) < 1
        assert row[f"{method}_compare"] == {"tensors_identical": True, "logits_identical": True}
    assert not list((tmp_path / "work").iterdir())  # checkpoints and outputs removed
    png = tmp_path / "growth.png"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "plot_stream_growth.py"),
            str(tmp_path / "stream_bench.py.json"),
            "--out",
            str(png),
        ],
        check=True,
        cwd=BENCH,
        capture_output=True,
    )
    assert png.stat().st_size > 0


def test_eval_wikidata_s_pause_counter_does_not_walk_the_frozen_heap(monkeypatch):
    """`--plain-heap`'s A/B: counting the frozen objects at each full collection walks the whole frozen
    heap (~15 ms per 0.5 M objects), time only the frozen arm would pay; the counter asks base/heap.py
    whether its block has the heap frozen instead."""
    import gc
    import importlib.util

    from tensorllm.base.heap import frozen_heap

    spec = importlib.util.spec_from_file_location("eval_wikidata", BENCH / "eval_wikidata.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with bench.GcPauses() as pauses:
        counted = []
        real = gc.get_freeze_count
        monkeypatch.setattr(gc, "get_freeze_count", lambda: counted.append(1) or real())
        gc.collect()
        with frozen_heap():
            gc.collect()
        monkeypatch.undo()
    assert counted == [1]  # frozen_heap's own count at entry, none in the collections
    assert pauses.full == 2 and [d[2] for d in pauses.full_detail] == [False, True]
