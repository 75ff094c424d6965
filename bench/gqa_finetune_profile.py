"""Where a step of the GQA recovery fine-tune goes: its time against one forward pass, and a profile.

    python bench/gqa_finetune_profile.py --device cpu --batch 2 --seq-len 256 --steps 6   # 2 CPU cores: 2 min
    python bench/gqa_finetune_profile.py --device cuda --batch 8 --seq-len 1024 --steps 20 # the GPU shape

SmolLM2-135M expanded to 9 K/V heads (as bench/gqa_smollm2.py does) -> converted to 1 K/V head
with `--steps` fine-tune steps under torch.profiler. A step runs the teacher forward, the student
forward and the backward, so it should cost about 4 teacher forwards; a much larger ratio points at
overhead outside the matrix products. Prints the ratio and the profiler's top operators.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from tensorllm.methods import registry
from tensorllm.methods.gqa import convert
from tensorllm.models.expand_kv import expand_kv
from tensorllm.models.io import load_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", type=int, default=18, help="operators in the profile table")
    args = ap.parse_args()
    device = torch.device(args.device)
    loaded = load_model(args.model, dtype="float32", device=str(device))
    expand_kv(loaded.model, loaded.arch)
    teacher = copy.deepcopy(loaded.model)
    tokens = torch.randint(
        0,
        loaded.model.config.vocab_size,
        (max(8, args.batch), args.seq_len),
        generator=torch.Generator().manual_seed(0),
    )
    precision = "bfloat16" if device.type == "cuda" else "float32"  # what train_precision "auto" picks
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        x = tokens[: args.batch].to(device)
        for _ in range(2):  # the second one is timed
            _sync(device)
            t0 = time.perf_counter()
            teacher(input_ids=x, use_cache=False)
            _sync(device)
            forward_s = time.perf_counter() - t0
    del teacher
    cfg = registry.config_from_dict(
        "gqa",
        {
            "kv_heads": 1,
            "seq_len": args.seq_len,
            "calib_tokens": tokens.numel(),
            "train_steps": args.steps,
            "train_batch_size": args.batch,
        },
    )
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        result = convert(loaded.model, loaded.arch, cfg, tokens, device=device, progress=False)
    step_s = result["summary"]["finetune"]["seconds"] / args.steps
    print(
        f"teacher forward ({args.batch} x {args.seq_len}, {precision}): {forward_s:.3f} s; "
        f"fine-tune step: {step_s:.3f} s = {step_s / forward_s:.2f} forwards"
    )
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
