"""GQA grouping criteria and L0 schedules (issue 13) on the real SmolLM2-135M, on the CPU.

    python bench/gqa_grouping.py --out bench/results/gqa_grouping_cpu/gqa_grouping.json   # 2 cores, long
    python bench/gqa_grouping.py --small --out /tmp/g.json        # 256 calibration tokens, 2 steps
    python bench/gqa_grouping.py --no-grid --train-steps 40 ...   # the fine-tune part alone

SmolLM2 (9 query / 3 K/V heads) is expanded to the equivalent 9-K/V-head model (`expand_kv`, exact).
Part 1, training-free: the calibration statistics are streamed twice (every token; the first
`--sinks` tokens of each sequence left out), then every grouping criterion (grouping_metric x
grouping_on, and the sink setting) groups, aligns and merges every layer to 3 and to 1 K/V heads
(convert.plan_layer, as `convert` does), scored by held-out perplexity on the tokens after the
calibration ones, and counted: in how many layers the groups are exactly expand_kv's copies (at 3 K/V
heads merging those reproduces the original model, so on this workload every criterion that finds
them ties: the expanded model checks the criteria, it cannot rank them). Contiguous grouping is
the reference. At 1 K/V head every criterion forms the one same group, and alignment and merge
read every token whatever the criterion: one row per sink setting.
Part 2: the gated fine-tune to 1 K/V head under l0_schedule ceiling and lagrangian, equal steps,
on text after the held-out text.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from pathlib import Path

import torch
from common import emit_json  # bench/common.py

from tensorllm.attention import read_attention, set_kv_heads, write_attention
from tensorllm.base.versions import versions
from tensorllm.eval.measure import perplexity
from tensorllm.methods import registry
from tensorllm.methods.gqa import convert
from tensorllm.methods.gqa.calibrate import calibration_documents, calibration_stats, chunk, token_stream
from tensorllm.methods.gqa.convert import key_planes, layer_key_planes, plan_layer
from tensorllm.models.expand_kv import expand_kv
from tensorllm.models.io import load_model


def training_free(mha, arch, stats, kv_heads: int, metric: str, on: str, grouping: str) -> tuple:
    """(the converted copy of `mha`, per-layer groups) for one criterion, from streamed statistics."""
    model = copy.deepcopy(mha)
    d = read_attention(model, arch, 0).head_dim
    planes = key_planes(model, arch, d)
    groups = []
    for i, s in enumerate(stats):
        w = read_attention(model, arch, i)
        plan = plan_layer(
            w, s, kv_heads, layer_key_planes(planes, w, arch), grouping=grouping, metric=metric, on=on
        )
        write_attention(model, arch, i, plan.merged)
        groups.append(plan.groups)
    set_kv_heads(model, arch, kv_heads)
    return model, groups


def copy_groups(n: int, kv_heads: int, original_kv: int) -> list[list[int]]:
    """The groups that merge expand_kv's copies (head h is a copy of original head h // (n / original))."""
    rep = n // original_kv
    by_original = [list(range(o * rep, (o + 1) * rep)) for o in range(original_kv)]
    per = original_kv // kv_heads
    return [sum(by_original[g * per : (g + 1) * per], []) for g in range(kv_heads)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--small", action="store_true", help="toy size: 4 layers' worth of tokens and steps")
    ap.add_argument("--calib-tokens", type=int, default=None)
    ap.add_argument("--eval-tokens", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=None, help="0: no fine-tune part")
    ap.add_argument("--train-seq-len", type=int, default=None)
    ap.add_argument("--train-batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-grid", action="store_true", help="skip part 1 (the training-free criteria)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    small = args.small
    calib_tokens = args.calib_tokens or (256 if small else 2048)
    eval_tokens = args.eval_tokens or (128 if small else 2048)
    seq_len = args.seq_len or (64 if small else 256)
    steps = args.train_steps if args.train_steps is not None else (2 if small else 60)
    train_seq = args.train_seq_len or (32 if small else 128)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    loaded = load_model(args.model, dtype="float32", device="cpu")
    arch, tok = loaded.arch, loaded.tokenizer
    ids = token_stream(tok, calibration_documents(None))
    calib = chunk(ids, calib_tokens, seq_len)
    held_out = chunk(ids, eval_tokens, seq_len, offset=calib.numel(), what="held-out evaluation")
    train_tokens = steps * args.train_batch_size * train_seq
    train = chunk(ids, max(train_tokens, train_seq), train_seq, offset=calib.numel() + held_out.numel())
    original_kv = loaded.model.config.num_key_value_heads
    original_ppl = perplexity(loaded.model, held_out)
    expand_kv(loaded.model, arch)
    mha = loaded.model
    n = mha.config.num_key_value_heads
    print(f"original ppl {original_ppl:.3f}, expanded to {n} K/V heads ({time.perf_counter() - t0:.0f} s)")

    ts = time.perf_counter()
    stats = {
        sink: calibration_stats(mha, arch, calib, progress=False, sink_tokens=sink, unit=True)
        for sink in (() if args.no_grid else (0, args.sinks))
    }
    calib_seconds = time.perf_counter() - ts
    criteria = [("contiguous", "energy", "both", 0)]
    criteria += [
        ("similarity", m, o, 0)
        for m, o in itertools.product(("energy", "cosine", "distance"), ("keys", "values", "both"))
    ]
    criteria += [
        ("similarity", m, o, args.sinks)
        for m, o in itertools.product(("energy", "cosine", "distance"), ("keys", "values", "both"))
    ]
    rows = []
    for kv in () if args.no_grid else (3, 1):
        for grouping, metric, on, sink in criteria:
            if kv == 1 and (grouping, metric, on) != ("similarity", "energy", "both"):
                continue  # one group: the same for every criterion
            ts = time.perf_counter()
            model, groups = training_free(mha, arch, stats[sink], kv, metric, on, grouping)
            want = copy_groups(n, kv, original_kv)
            row = {
                "kv_heads": kv,
                "grouping": grouping,
                "grouping_metric": metric,
                "grouping_on": on,
                "sink_tokens": sink,
                "perplexity": perplexity(model, held_out),
                "layers_grouping_the_copies": sum(g == want for g in groups),
                "layers": len(groups),
                "seconds": time.perf_counter() - ts,
            }
            rows.append(row)
            print(
                f"kv {kv} {grouping:10s} {metric:8s} {on:6s} sink {sink}: ppl {row['perplexity']:.3f}  "
                f"copies grouped in {row['layers_grouping_the_copies']}/{row['layers']} layers  "
                f"{row['seconds']:.0f} s",
                flush=True,
            )
            del model

    finetune = []
    for schedule in ("ceiling", "lagrangian") if steps else ():
        opts = {
            "kv_heads": 1,
            "seq_len": seq_len,
            "calib_tokens": calib_tokens,
            "train_steps": steps,
            "train_batch_size": args.train_batch_size,
            "lr": args.lr,
            "l0_schedule": schedule,
        }
        ts = time.perf_counter()
        model = copy.deepcopy(mha)
        result = convert(
            model, arch, registry.config_from_dict("gqa", opts), calib, train=train, progress=False
        )
        info = result["summary"]["finetune"]
        last = info["history"][-1]
        finetune.append(
            {
                "l0_schedule": schedule,
                "steps": steps,
                "perplexity": perplexity(model, held_out),
                "kl_first": info["kl_first"],
                "kl_last10": info["kl_last10"],
                "closed_at_end": last["closed"],
                "final_open_probability": info["final_open_probability"],
                "log_alpha_max_at_end": last["log_alpha_max"],
                "closed_by_step": [
                    (h["step"], round(h["closed"], 3), round(h["target"], 3)) for h in info["history"]
                ],
                "seconds": time.perf_counter() - ts,
            }
        )
        f = finetune[-1]
        print(
            f"fine-tune {schedule:10s} {steps} steps: ppl {f['perplexity']:.3f}  KL {f['kl_first']:.3f} -> "
            f"{f['kl_last10']:.3f}  closed {f['closed_at_end']:.3f}  {f['seconds']:.0f} s",
            flush=True,
        )
        del model
    emit_json(
        {
            "bench": "gqa_grouping",
            "weights": "real SmolLM2-135M-Instruct",
            "model": args.model,
            "device": "cpu",
            "threads": args.threads,
            "calib_tokens": int(calib.numel()),
            "eval_tokens": int(held_out.numel()),
            "seq_len": int(calib.shape[1]),
            "train_tokens": int(train.numel()),
            "train_seq_len": train_seq,
            "original_perplexity": original_ppl,
            "calibration_seconds": calib_seconds,
            "training_free": rows,
            "finetune": finetune,
            "seconds": time.perf_counter() - t0,
            "versions": versions(),
        },
        args.out,
        quiet=True,
    )


if __name__ == "__main__":
    main()
