"""The fine-tune's closed-gate shortcut (after the warm-up the own K/V heads are skipped), A/B.

    python bench/gqa_closed_gates.py --steps 6 --batch 2 --seq-len 256 --repeats 2   # CPU, ~2 min

SmolLM2-135M expanded to 9 K/V heads, converted to 1 with a fine-tune whose warm-up is its first
step; "on" is the library as it is, "off" keeps computing the own heads (multiplied by z = 0).
Reports seconds per step of each, alternating, and whether the final KL is the same.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from common import emit_json  # bench/common.py

from tensorllm.methods import registry
from tensorllm.methods.gqa import convert, gates
from tensorllm.models.expand_kv import expand_kv
from tensorllm.models.io import load_model


def run(loaded, tokens, cfg, shortcut: bool) -> dict:
    real_fix = gates.HardConcreteGates.fix

    def fix_without_shortcut(self, value):
        real_fix(self, value)
        self.closed = False  # GatedKV then computes z * own + (1 - z) * shared

    if not shortcut:
        gates.HardConcreteGates.fix = fix_without_shortcut
    try:
        info = convert(copy.deepcopy(loaded.model), loaded.arch, cfg, tokens, progress=False)["summary"][
            "finetune"
        ]
    finally:
        gates.HardConcreteGates.fix = real_fix
    return {"seconds_per_step": info["seconds"] / cfg.train_steps, "kl_last": info["kl_last"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    loaded = load_model(args.model, dtype="float32", device=args.device)
    expand_kv(loaded.model, loaded.arch)
    vocab = loaded.model.config.vocab_size
    tokens = torch.randint(
        0, vocab, (4 * args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)
    )
    cfg = registry.config_from_dict(
        "gqa",
        {
            "kv_heads": 1,
            "seq_len": args.seq_len,
            "calib_tokens": tokens.numel(),
            "train_steps": args.steps,
            "train_batch_size": args.batch,
            "sparsity_warmup": 1 / args.steps,
        },
    )
    rows = [
        {"shortcut": on, **run(loaded, tokens, cfg, on)} for _ in range(args.repeats) for on in (True, False)
    ]
    on = [r["seconds_per_step"] for r in rows if r["shortcut"]]
    off = [r["seconds_per_step"] for r in rows if not r["shortcut"]]
    emit_json(
        {
            "bench": "gqa_closed_gates",
            "device": args.device,
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "runs": rows,
            "mean_on": sum(on) / len(on),
            "mean_off": sum(off) / len(off),
            "same_kl": len({r["kl_last"] for r in rows}) == 1,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
