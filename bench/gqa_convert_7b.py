"""Time and memory of MHA -> GQA conversion at LLaMA-2-7B size (random weights: timing only).

    python bench/gqa_convert_7b.py --out runs/gqa_convert_7b.json  # H100: 32 -> 8 K/V heads, 128 x 2048 tok
    python bench/gqa_convert_7b.py --small                          # CPU toy size, checks the script

Builds LlamaForCausalLM from a LlamaConfig with LLaMA-2-7B's published shape directly on the GPU in
bf16 (no download), converts it with 128 x 2048 random calibration token ids, and prints the
seconds of each phase and the peak GPU memory. Quality numbers come from bench/gqa_smollm2.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import emit_json  # bench/common.py

from tensorllm.archs import spec_for
from tensorllm.base.versions import versions
from tensorllm.methods import registry
from tensorllm.methods.gqa import convert

LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
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

    config = LlamaConfig(**shape, attn_implementation="sdpa")
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in bf16: no fp32 copy of 7B weights
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="toy model on CPU")
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--calib-seqs", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per calibration forward")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here too")
    args = ap.parse_args()

    shape = TOY if args.small else LLAMA2_7B
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    kv = args.kv_heads or (2 if args.small else 8)
    n_seq, seq_len = (
        args.calib_seqs or (8 if args.small else 128),
        args.seq_len or (128 if args.small else 2048),
    )

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build(shape, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t_build = time.perf_counter() - t0
    tokens = torch.randint(
        0, shape["vocab_size"], (n_seq, seq_len), generator=torch.Generator().manual_seed(0)
    )
    cfg = registry.config_from_dict(
        "gqa",
        {"kv_heads": kv, "seq_len": seq_len, "calib_tokens": n_seq * seq_len, "batch_size": args.batch_size},
    )
    t1 = time.perf_counter()
    result = convert(model, spec_for(model.config), cfg, tokens, device=device, progress=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t1
    s = result["summary"]
    out = {
        "bench": "gqa_convert_7b",
        "weights": "random (timing only)",
        "shape": shape,
        "dtype": str(dtype),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "kv_heads": {"before": shape["num_key_value_heads"], "after": model.config.num_key_value_heads},
        "calib_tokens": n_seq * seq_len,
        "calib_shape": [n_seq, seq_len],
        "seconds": {
            "build_model": t_build,
            "calibration": s["seconds_calibration"],
            "group_align_merge": s["seconds_group_align_merge"],
            "convert_total": seconds,
        },
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
        "model_weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30,
        "mean_key_energy_kept": s["mean_key_energy_kept"],
        "mean_value_energy_kept": s["mean_value_energy_kept"],
        "versions": versions(),
    }
    emit_json(out, args.out)


if __name__ == "__main__":
    main()
