"""Decode speed of a GQA-converted model (8 K/V heads) versus the original (32), LLaMA-2-7B shape.

    python bench/gqa_decode.py --out runs/gqa_decode.json      # H100: batch 16, 4k context, bf16
    python bench/gqa_decode.py --small                         # CPU toy size, checks the script

Random weights (speed does not depend on them). Each model is timed in its own fresh process
(`--only original|converted`): built with 32 K/V heads and, for "converted", converted in place with
`tensorllm.methods.gqa.convert`; each writes its JSON after every path, so a path that fails or a
run cut short keeps the paths already timed. The conversion here is
contiguous grouping without alignment on a short random calibration: the converted model's
shapes (and so its speed) are the same whichever groups and rotations are chosen, and the full
similarity + alignment search (~2.5 min at this size, timed by bench/gqa_convert_7b.py) would
only spend the call's time limit. Paths (`--paths`):
- "default": transformers' `generate` as it comes (dynamic cache, eager forward), SDPA attention;
- "static" -> "static_compiled": `generate(cache_implementation="static")` with torch.compile of the
  decode step (mode reduce-overhead = CUDA graphs), transformers' SDPA attention — which, compiled
  and masked, repeats each K/V head per query head (`repeat_kv`), so a grouped model gains nothing
  (7B shape, 8 K/V heads: 26.4 and 28.2 ms/step vs the 32-head original's 16.0 and 15.8, 2026-11-30);
- "gqa", "packed" (grouped models only): the same with tensorllm's decode attention
  (models/decode_attention.py: each K/V head read once; "gqa" = SDPA's own grouped heads,
  "packed" = a group's query heads as query rows), compared with the original's "static" (for 32
  K/V heads they are the same code);
- "flex": transformers' flex_attention (torch's FlexAttention; compiled, it decodes with split-K;
  with `--driver loop` the full graph breaks at torch 2.11's `create_block_mask`, which warns).
`--driver loop` runs the static paths without `generate`: one compiled step (forward + argmax) in a
loop that never reads a token back to the host until the timed segment ends
(methods/gqa/measure.py `decode_loop_ms`); names then start with "loop" instead of "static".
`best_vs_best` compares the fastest static path of each model. On the CPU (--small) the static
paths run uncompiled ("static", "static_gqa", ...). `--parallel` times the two models at once on
GPUs 0 and 1.
ms/step, generate: median interval between consecutive new tokens (timestamped by a streamer, which
copies each token to the host, i.e. after the device finished the step); loop: the median timed
segment / its steps. The prefill is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from common import emit_json  # bench/common.py

from tensorllm.archs import spec_for
from tensorllm.base.versions import versions
from tensorllm.eval.measure import decode_loop_ms, decode_step_ms, kv_cache_bytes_per_token
from tensorllm.methods import registry
from tensorllm.methods.gqa import convert
from tensorllm.models.decode_attention import register as register_decode

LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096 + 256,
)
TOY = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=1000,
    max_position_embeddings=512,
)


def build(shape: dict, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(LlamaConfig(**shape, attn_implementation="sdpa"))
    finally:
        torch.set_default_dtype(old)
    model.generation_config.pad_token_id = 0
    return model.eval()


PATHS = ("default", "gqa", "packed", "flex", "static")  # what --paths may name, in the order timed


def attention_for(path: str) -> str:
    """The attention implementation a path decodes with (tensorllm's are registered on first use)."""
    if path in ("gqa", "packed"):
        return register_decode(path)
    return "flex_attention" if path == "flex" else "sdpa"


def measure(
    model, prompt, new_tokens, repeats, compile_ok: bool, paths: list[str], save, driver: str = "generate"
) -> dict:
    """Time each path; `save(out)` after each one, so a run cut short keeps the paths it finished.
    driver "loop": the static paths run `decode_loop_ms` (no host sync per step) instead of `generate`."""
    out = {
        "kv_heads": model.config.num_key_value_heads,
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(model),
    }
    grouped = model.config.num_key_value_heads < model.config.num_attention_heads
    static = ("loop" if driver == "loop" else "static") + ("_compiled" if compile_ok else "")
    for path in (p for p in PATHS if p in paths):
        if (
            path in ("packed", "gqa") and not grouped
        ):  # on a multi-head model it is transformers' SDPA: "static"
            continue
        name = "default" if path == "default" else static if path == "static" else f"{static}_{path}"
        if compile_ok:
            torch._dynamo.reset()  # each compiled path starts clean, far from dynamo's recompile limit
        try:
            model.set_attn_implementation(attention_for(path))
            out[name] = time_path(model, prompt, new_tokens, repeats, path, driver, compile_ok)
        except Exception as exc:  # keep the other paths' numbers if this runtime cannot run this one
            out[name + "_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        if prompt.device.type == "cuda":
            # the peak over every path timed so far in this process (the model is the same throughout)
            out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(prompt.device) / 2**30
        save(out)
    return out


def time_path(model, prompt, new_tokens: int, repeats: int, path: str, driver: str, compile_ok: bool) -> dict:
    """One path's timing: `generate` as it comes ("default"), the sync-free loop (driver "loop"), or
    `generate` with a static cache, compiled on CUDA."""
    if path == "default":
        return decode_step_ms(model, prompt, new_tokens, repeats=repeats)
    if driver == "loop":
        timed = decode_loop_ms(model, prompt, new_tokens, repeats=repeats, compile=compile_ok)
        timed.pop("tokens")
        return timed
    kw = {"cache_implementation": "static"}
    if compile_ok:
        from transformers import CompileConfig

        kw["compile_config"] = CompileConfig(fullgraph=True, mode="reduce-overhead")
    return decode_step_ms(model, prompt, new_tokens, repeats=repeats, **kw)


def speedups(original: dict, converted: dict) -> dict:
    """Converted vs original per path (the converted "gqa" / "packed" paths against the original's static
    one),
    and best static path vs best static path."""
    out = {}
    for name, value in converted.items():
        if not isinstance(value, dict):
            continue
        base = name.removesuffix("_packed").removesuffix("_gqa")
        if base in original:
            out[name] = original[base]["ms_per_step"] / value["ms_per_step"]

    def fastest(measured: dict):  # (ms, path) of the quickest static path, None if none was timed
        timed = [(v["ms_per_step"], k) for k, v in measured.items() if isinstance(v, dict) and k != "default"]
        return min(timed) if timed else None

    a, b = fastest(original), fastest(converted)
    if a and b:
        out["best_vs_best"] = {"original": a[1], "converted": b[1], "speedup": a[0] / b[0]}
    return out


def one_model(args, which: str) -> dict:
    """Build the model, convert it when `which` is "converted", and time it (one process, one compile)."""
    shape = TOY if args.small else LLAMA2_7B
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    batch, context = args.batch or (2 if args.small else 16), args.context or (128 if args.small else 4096)
    new_tokens = args.new_tokens or (16 if args.small else 64)
    kv = args.kv_heads or (2 if args.small else 8)
    torch.manual_seed(0)
    model = build(shape, device, dtype)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, shape["vocab_size"], (batch, context), generator=gen).to(device)
    seconds_convert = None
    if which == "converted":
        calib = torch.randint(0, shape["vocab_size"], (2, 256), generator=torch.Generator().manual_seed(2))
        cfg = registry.config_from_dict(
            "gqa",
            {"kv_heads": kv, "seq_len": 256, "calib_tokens": 512, "grouping": "contiguous", "align": False},
        )
        t0 = time.perf_counter()
        convert(model, spec_for(model.config), cfg, calib, device=device, progress=False)
        seconds_convert = time.perf_counter() - t0
    info = {
        "which": which,
        "seconds_convert": seconds_convert,
        "shape": shape,
        "dtype": str(dtype),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": batch,
        "context": context,
        "new_tokens": new_tokens,
    }
    out = measure(
        model,
        prompt,
        new_tokens,
        args.repeats,
        compile_ok=device.type == "cuda",
        paths=args.paths.split(","),
        driver=args.driver,
        save=lambda out: emit_json({**info, "measured": out}, args.out, quiet=True),
    )
    if args.out is None:
        emit_json({**info, "measured": out}, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="toy model on CPU")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--context", type=int, default=None, help="prompt tokens (the KV cache the decode reads)")
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None, help="decode steps per generate call")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--only",
        choices=["original", "converted"],
        default=None,
        help="time one model in this process (the default runs both, each in a fresh process)",
    )
    ap.add_argument(
        "--paths",
        default=",".join(PATHS),
        help="comma list of: default (generate as it comes), gqa, packed (tensorllm's decode "
        "attention; grouped models only), flex (transformers' flex_attention), "
        "static (transformers' SDPA); all but default use a static cache, compiled on CUDA",
    )
    ap.add_argument(
        "--driver",
        choices=["generate", "loop"],
        default="generate",
        help="what runs the static paths: transformers' generate, or a compiled one-step function in a "
        "loop that never waits for the host (decode_loop_ms: the gpt-fast way)",
    )
    ap.add_argument(
        "--parallel",
        action="store_true",
        help="time the two models at once, the original on GPU 0 and the converted on GPU 1",
    )
    ap.add_argument(
        "--child-timeout",
        type=float,
        default=None,
        help="seconds each model's process may run (with --parallel: both together)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        ap.error(f"unknown --paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    if args.only:
        one_model(args, args.only)  # writes args.out after each timed path
        return
    parts = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {}
        deadline = time.monotonic() + args.child_timeout if args.child_timeout else None
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "0,1").split(",") if d.strip()]
        try:
            for i, which in enumerate(("original", "converted")):  # beside --out, so a cut run leaves them
                path = (
                    args.out.with_name(f"{args.out.stem}.{which}.json")
                    if args.out
                    else Path(tmp) / f"{which}.json"
                )
                path.unlink(missing_ok=True)
                cmd = [sys.executable, __file__, *sys.argv[1:], "--only", which, "--out", str(path)]
                env = (
                    {**os.environ, "CUDA_VISIBLE_DEVICES": visible[i % len(visible)]}
                    if args.parallel
                    else None
                )
                jobs[which] = (path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env))
                if not args.parallel:
                    _wait(jobs[which][1], deadline)
                    deadline = time.monotonic() + args.child_timeout if args.child_timeout else None
            for which, (path, proc) in jobs.items():
                code = _wait(proc, deadline)
                if not path.is_file():
                    raise SystemExit(
                        f"timing the {which} model failed (exit {code}) before any path finished"
                    )
                parts[which] = json.loads(path.read_text())
                if code:
                    parts[which]["exit_code"] = code
        finally:  # a model that failed must not leave the other one running on its GPU
            for _, proc in jobs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    original, converted = parts["original"]["measured"], parts["converted"]["measured"]
    speedup = speedups(original, converted)
    first = parts["original"]
    result = {
        "bench": "gqa_decode",
        "weights": "random (speed only)",
        "processes": "one per model (fresh compile each)"
        + (", at once on GPUs 0 and 1" if args.parallel else ""),
        **{k: first[k] for k in ("shape", "dtype", "device", "batch", "context", "new_tokens")},
        "attention": "sdpa; *_flex: flex_attention; *_gqa / *_packed: tensorllm.models.decode_attention",
        "exit_codes": {w: parts[w].get("exit_code", 0) for w in parts},
        "original": original,
        "converted": converted,
        "speedup": speedup,
        "seconds_convert": parts["converted"]["seconds_convert"],
        "versions": versions(),
    }
    emit_json(result, args.out)


def _wait(proc: subprocess.Popen, deadline: float | None) -> int:
    """The process's exit code; killed when time.monotonic() passes `deadline` first."""
    try:
        return proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


if __name__ == "__main__":
    main()
