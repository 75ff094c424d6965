"""Time the batched WikidataQA evaluation against a one-example-at-a-time loop (LASER's way).

    python bench/eval_wikidata.py --model smollm2-135m --device cuda --json out/bench_eval.json
    python bench/eval_wikidata.py --device cuda --batch-size 512,1024,2048 --json ...   # one timing each
    python bench/eval_wikidata.py --model smollm2-135m --device cpu --limit 64 --sequential 16

Batched: `tensorllm.eval.evaluate` on every single-answer WikidataQA item (split "all"): greedy
generation of 10 tokens with a KV cache + one teacher-forced pass for the gold-answer loss.
Sequential: per item `model.generate(...)` and one forward pass, as LASER's reference code does,
on the first N items. Both report ms per example; on the N shared items their accuracy must match.
Decode: `greedy_generate` alone on the same items (the batched run's prompts, largest batch size),
the plain loop (growing cache, a host sync per step) against the static-cache loop
(eval/static_decode.py; opt-in: `greedy_generate(static=True)`), timed, with the number of rows
whose tokens differ (must be 0). `--no-decode` skips it.
Every timed run also reports Python's garbage-collector pauses inside it (count of full collections,
seconds in all collections). `--plain-heap` pairs each timed run with one whose heap is not
frozen (tensorllm/base/heap.py patched out; frozen first in even pairs, second in odd ones), the A/B
of that change in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import time

import torch

from tensorllm.base.devices import eval_dtype, resolve_device
from tensorllm.base.heap import frozen_by_block
from tensorllm.eval import decoder, evaluate, get_task, load_task, select
from tensorllm.eval.scoring import _decoder_ids
from tensorllm.eval.tokens import encode
from tensorllm.models.io import load_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GcPauses:
    """Python's collections while the block runs: how many were full (generation 2), seconds in all;
    per full one (seconds, objects it freed, whether base/heap.py's block had the heap frozen); the
    tracked and the frozen objects when the block starts. (Runs before 2026-12-03's second session
    recorded the frozen count at each full collection instead: a walk of the frozen heap, ~15 ms per
    0.5 M objects, in the frozen arm's time only.)"""

    def __init__(self):
        self.full, self.seconds, self._t0, self._frozen = 0, 0.0, 0.0, False
        self.full_detail: list[tuple[float, int, bool]] = []
        self.tracked_at_start = self.frozen_at_start = 0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":  # (not gc.get_freeze_count: it walks the frozen objects)
            self._frozen = frozen_by_block()
            self._t0 = time.perf_counter()
        else:
            took = time.perf_counter() - self._t0
            self.seconds += took
            if info["generation"] == 2:
                self.full += 1
                self.full_detail.append((round(took, 4), info["collected"], self._frozen))

    def __enter__(self):
        self.tracked_at_start, self.frozen_at_start = len(gc.get_objects()), gc.get_freeze_count()
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)


@contextlib.contextmanager
def heap(frozen: bool):
    """The evaluation as shipped (`frozen`), or with base/heap.py's freeze patched out."""
    evaluate_module = importlib.import_module("tensorllm.eval.evaluate")  # not the re-exported function
    if frozen:
        yield
        return
    shipped = evaluate_module.frozen_heap
    evaluate_module.frozen_heap = contextlib.nullcontext
    try:
        yield
    finally:
        evaluate_module.frozen_heap = shipped


@torch.inference_mode()
def sequential(model, tok, items) -> tuple[float, float, float]:
    """(seconds, accuracy %, loss) of the plain loop: one generate + one forward per example."""
    device = next(model.parameters()).device
    correct, losses = 0, []
    _sync(device)
    t0 = time.perf_counter()
    for e in items:
        enc = tok(e.prompt, return_tensors="pt").to(device)
        out = model.generate(**enc, max_new_tokens=10, min_new_tokens=1, do_sample=False)
        text = tok.decode(out[0], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        correct += e.answer.strip().lower() in text.strip().lower()
        full = tok(f"{e.prompt} {e.answer}", return_tensors="pt").input_ids.to(device)
        n_ans = full.shape[1] - enc.input_ids.shape[1]
        logp = torch.log_softmax(model(full).logits[0, :-1].float(), dim=-1)
        token_lp = logp.gather(1, full[0, 1:, None])[:, 0]
        losses.append(-token_lp[-n_ans:].mean().item())
    _sync(device)
    return time.perf_counter() - t0, 100.0 * correct / len(items), sum(losses) / len(losses)


def decode_paths(model, tok, items, batch_size: int) -> dict:
    """Seconds of the plain, the static and (on a GPU) the CUDA-graph greedy loop on the same prompts
    (10 tokens, min 1), and how many rows differ from the plain loop's. Each path runs once untimed
    first (allocator, kernels, the graphs' capture for the first batch's shape), then once timed; the
    graph path is also timed cold (all captures included)."""
    device = next(model.parameters()).device
    prompts = encode(tok, [e.prompt for e in items])
    eos_ids, pad = _decoder_ids(model, tok)
    kw = dict(max_new_tokens=10, eos_ids=eos_ids, pad_id=pad, batch_size=batch_size, progress=False)
    paths = {"plain": dict(static=False, graphs=False), "static": dict(static=True, graphs=False)}
    if decoder._use_graphs(model, device, True):
        paths["graphs"] = dict(graphs=True)
    out, seconds = {}, {}
    for name, how in paths.items():
        if name == "graphs":
            _sync(device)
            t0 = time.perf_counter()
            decoder.greedy_generate(model, prompts, **how, **kw)  # cold: every batch shape captured
            _sync(device)
            seconds["graphs_cold"] = time.perf_counter() - t0
        else:
            decoder.greedy_generate(model, prompts[:batch_size], **how, **kw)
        _sync(device)
        t0 = time.perf_counter()
        out[name] = decoder.greedy_generate(model, prompts, **how, **kw)
        _sync(device)
        seconds[name] = time.perf_counter() - t0
    return {
        "n": len(prompts),
        "batch_size": batch_size,
        **{f"{k}_seconds": round(v, 3) for k, v in seconds.items()},
        "static_used": decoder._use_static(model, device, True),
        "graphs_used": "graphs" in out and decoder._use_graphs(model, device, True),
        **{
            f"rows_differing_{k}": sum(a != b for a, b in zip(out["plain"], v))
            for k, v in out.items()
            if k != "plain"
        },
        "tokens": sum(map(len, out["plain"])),
    }


def profile(path: str, fn, device: torch.device) -> None:
    """cProfile of fn() (synchronised at the end), the top 40 functions by cumulative and by own time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    _sync(device)
    prof.disable()
    out = io.StringIO()
    for key in ("cumulative", "tottime"):
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(40)
    from pathlib import Path

    Path(path).write_text(out.getvalue())


def _run_row(row) -> dict:
    seconds, size, res, pauses = row
    return {
        "batch_size": size,
        "seconds": round(seconds, 3),
        "seconds_by_phase": res.seconds_by_phase,
        "accuracy": res.accuracy,
        "loss": res.loss,
        "gc_full_collections": pauses.full,
        "gc_seconds": round(pauses.seconds, 4),
        "gc_full_detail_seconds_freed_heap_frozen": pauses.full_detail,
        "gc_tracked_frozen_at_start": [pauses.tracked_at_start, pauses.frozen_at_start],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--batch-size", default="512", help="one size, or a comma list timed one after the other")
    ap.add_argument("--limit", type=int, default=None, help="batched run on the first N items only")
    ap.add_argument("--sequential", type=int, default=200, help="items for the one-at-a-time loop")
    ap.add_argument("--no-decode", action="store_true", help="skip the plain vs static decode timing")
    ap.add_argument("--plain-heap", action="store_true", help="alternate runs: heap not frozen")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--profile", default=None, help="write a cProfile of one more full evaluation (text, top 40)"
    )
    args = ap.parse_args()

    sizes = [int(b) for b in args.batch_size.split(",")]
    loaded = load_model(
        args.model, dtype=eval_dtype(args.dtype, resolve_device(args.device)), device=args.device
    )
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    all_items = list(load_task(get_task("wikidata_qa")).examples)

    evaluate(model, tok, "wikidata_qa", split="all", limit=64, batch_size=64, progress=False)  # warm-up
    sweep, plain = [], []
    for k, size in enumerate(sizes):  # with --plain-heap the pair's order alternates (the first run is cold)
        for frozen in ((True, False) if k % 2 == 0 else (False, True)) if args.plain_heap else (True,):
            with heap(frozen), GcPauses() as pauses:
                _sync(device)
                t0 = time.perf_counter()
                res = evaluate(
                    model, tok, "wikidata_qa", split="all", limit=args.limit, batch_size=size, progress=False
                )
                _sync(device)
                seconds = time.perf_counter() - t0
            (sweep if frozen else plain).append((seconds, size, res, pauses))
            phases = ", ".join(f"{k} {v:.2f}" for k, v in (res.seconds_by_phase or {}).items())
            print(
                f"batch {size}{'' if frozen else ' (heap not frozen)'}: {res.n} items in {seconds:.2f} s "
                f"(acc {res.accuracy:.2f}%, loss {res.loss:.4f}; {phases}; "
                f"gc: {pauses.full} full, {pauses.seconds:.3f} s; "
                f"full (s, freed, heap frozen) {pauses.full_detail}; "
                f"tracked / frozen at start {pauses.tracked_at_start} / {pauses.frozen_at_start})"
            )
    batched_s, batch_size, res, _ = min(sweep, key=lambda r: r[0])
    if args.profile:
        profile(
            args.profile,
            lambda: evaluate(
                model,
                tok,
                "wikidata_qa",
                split="all",
                limit=args.limit,
                batch_size=batch_size,
                progress=False,
            ),
            device,
        )

    seq_items = select(all_items, "all", args.sequential)
    seq_s, seq_acc, seq_loss = sequential(model, tok, seq_items)
    same = evaluate(
        model, tok, "wikidata_qa", split="all", limit=args.sequential, batch_size=batch_size, progress=False
    )

    decode = None
    if not args.no_decode:
        decode = decode_paths(model, tok, select(all_items, "all", args.limit), max(sizes))
        timed = ", ".join(
            f"{k.removesuffix('_seconds')} {v:.2f} s" for k, v in decode.items() if k.endswith("_seconds")
        )
        differ = ", ".join(
            f"{k.removeprefix('rows_differing_')} {v}" for k, v in decode.items() if k.startswith("rows_")
        )
        print(
            f"decode    : {decode['n']} items, batch {decode['batch_size']}: {timed} "
            f"(rows differing from plain: {differ})"
        )

    report = {
        "model": args.model,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "items_in_file_single_answer": len(all_items),
        "batch_sweep": [_run_row(row) for row in sweep],
        "heap_not_frozen": [_run_row(row) for row in plain],
        "batched": {
            "n": res.n,
            "batch_size": batch_size,
            "seconds": round(batched_s, 3),
            "ms_per_example": round(1000 * batched_s / res.n, 3),
            "accuracy": res.accuracy,
            "loss": res.loss,
        },
        "sequential": {
            "n": len(seq_items),
            "seconds": round(seq_s, 3),
            "ms_per_example": round(1000 * seq_s / len(seq_items), 3),
            "accuracy": seq_acc,
            "loss": seq_loss,
        },
        "same_items_batched": {"n": same.n, "accuracy": same.accuracy, "loss": same.loss},
        "decode": decode,
    }
    report["speedup"] = round(report["sequential"]["ms_per_example"] / report["batched"]["ms_per_example"], 1)
    print(
        f"batched   : {res.n} items in {batched_s:.2f} s = "
        f"{report['batched']['ms_per_example']:.3f} ms/example "
        f"(acc {res.accuracy:.2f}%, loss {res.loss:.4f})"
    )
    print(
        f"sequential: {len(seq_items)} items in {seq_s:.2f} s = {report['sequential']['ms_per_example']:.3f} "
        f"ms/example (acc {seq_acc:.2f}%, loss {seq_loss:.4f}; batched on the same items: "
        f"acc {same.accuracy:.2f}%, loss {same.loss:.4f})"
    )
    print(f"speed-up  : {report['speedup']}x")
    print(json.dumps(report, indent=2))
    if args.json:
        from pathlib import Path

        from tensorllm.base.files import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
