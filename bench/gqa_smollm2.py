"""Quality of MHA -> GQA on the real SmolLM2-135M: held-out perplexity of each variant vs the original.

    python bench/gqa_smollm2.py --out runs/gqa_smollm2.json --train-steps 400        # GPU
    python bench/gqa_smollm2.py --train-steps 3000 --train-batch-size 8 --train-tokens 200000 # fine-tune text
    python bench/gqa_smollm2.py --model /tmp/s/smol.gguf --calib-file text.txt ...    # a GGUF copy
    python bench/gqa_smollm2.py --small                                               # CPU, checks the script

SmolLM2 has 9 query / 3 K/V heads. It is expanded to the equivalent 9-K/V-head multi-head model
(`expand_kv`, exact), then converted with calibration text (20k tokens) and scored on the 15k
tokens that follow it in the same text:
- kv_heads=3, similarity + align: must find the copies and reproduce the original (sanity);
- kv_heads=1, align / no-align (with one group, no-align is classic GQA mean-pooling), and
  kv_heads=1 align + the gated distillation fine-tune (--train-steps).
Text: --calib-file, else tensorllm.data.default_calibration_text(), else (or with --text stdlib)
the docstrings of Python's standard library.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from common import emit_json  # bench/common.py

from tensorllm.base.errors import UserError
from tensorllm.base.versions import versions
from tensorllm.eval.measure import kv_cache_bytes_per_token, perplexity
from tensorllm.methods import registry
from tensorllm.methods.gqa import convert
from tensorllm.methods.gqa.calibrate import calibration_documents, chunk, token_stream
from tensorllm.models.expand_kv import expand_kv
from tensorllm.models.io import load_model


def stdlib_documents(min_chars: int) -> list[str]:
    """Long docstrings of standard-library modules, classes and functions: English prose found offline."""
    import importlib
    import inspect
    import pkgutil
    import sys

    docs, total = [], 0
    names = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.startswith(sys.base_prefix))
    for name in names:
        if name.startswith(("_", "test", "idle", "tkinter", "turtle", "antigravity", "this")):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        for obj in [mod] + [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]:
            if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj):
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 300 and doc not in docs:
                    docs.append(doc)
                    total += len(doc)
        if total >= min_chars:
            break
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--small", action="store_true", help="few tokens and steps on CPU")
    ap.add_argument("--calib-file", default=None)
    ap.add_argument("--text", choices=["default", "stdlib"], default="default")
    ap.add_argument("--calib-tokens", type=int, default=None)
    ap.add_argument("--eval-tokens", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    ap.add_argument("--train-batch-size", type=int, default=None)
    ap.add_argument(
        "--train-tokens",
        type=int,
        default=0,
        help="fine-tune on this many tokens after the held-out ones (0: on the calibration tokens)",
    )
    ap.add_argument(
        "--train-precision", default="auto", help="auto (bfloat16 autocast on CUDA), bfloat16, float32"
    )
    ap.add_argument("--train-scope", choices=["attention", "all"], default="attention")
    ap.add_argument("--train-dir", default=None, help="fine-tune checkpoints; rerunning resumes from them")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    small = args.small
    device = args.device or ("cpu" if small else "cuda")
    calib_tokens = args.calib_tokens or (1024 if small else 20480)
    eval_tokens = args.eval_tokens or (512 if small else 15360)
    seq_len = args.seq_len or (128 if small else 1024)
    steps = args.train_steps if args.train_steps is not None else (4 if small else 400)
    batch = args.train_batch_size or (2 if small else 4)
    if small:
        torch.set_num_threads(1)  # tiny ops on a shared CPU

    t0 = time.perf_counter()
    loaded = load_model(args.model, dtype="float32", device=device)
    text = args.calib_file or args.text
    try:
        docs = calibration_documents(args.calib_file) if text != "stdlib" else None
    except UserError as exc:
        if args.calib_file:
            raise
        print(f"note: {exc}; using the standard library's docstrings")
        docs, text = None, "stdlib"
    if docs is None:
        docs = stdlib_documents(4 * (calib_tokens + eval_tokens) + 20_000)
    ids = token_stream(loaded.tokenizer, docs)
    calib = chunk(ids, calib_tokens, seq_len)
    held_out = chunk(ids, eval_tokens, seq_len, offset=calib.numel(), what="held-out evaluation")
    # fine-tune text after the held-out text, so calibration and held-out stay those of the runs before
    train = (
        chunk(ids, args.train_tokens, seq_len, offset=calib.numel() + held_out.numel(), what="fine-tune text")
        if args.train_tokens
        else None
    )
    arch = loaded.arch
    original_ppl = perplexity(loaded.model, held_out)
    original_kv = kv_cache_bytes_per_token(loaded.model)
    expand_kv(loaded.model, arch)
    mha = loaded.model
    mha_ppl = perplexity(mha, held_out)
    print(
        f"original ppl {original_ppl:.3f}   expanded to MHA {mha_ppl:.3f}   "
        f"({time.perf_counter() - t0:.0f} s)"
    )

    variants = [
        ("kv3_similarity_align", dict(kv_heads=3, grouping="similarity", align=True)),
        ("kv1_align", dict(kv_heads=1, align=True)),
        ("kv1_no_align", dict(kv_heads=1, align=False)),  # one group: plain mean-pooling of all K/V heads
    ]
    if steps:
        variants.append(
            (
                f"kv1_align_finetune{steps}",
                dict(
                    kv_heads=1,
                    align=True,
                    train_steps=steps,
                    lr=args.lr,
                    lr_schedule=args.lr_schedule,
                    train_batch_size=batch,
                    train_precision=args.train_precision,
                    train_scope=args.train_scope,
                    train_dir=args.train_dir,
                ),
            )
        )
    rows = []
    for name, opts in variants:
        model = copy.deepcopy(mha)
        cfg = registry.config_from_dict("gqa", {"seq_len": seq_len, **opts})
        ts = time.perf_counter()
        # the fine-tune's held-out perplexity curve (the monitor only observes)
        result = convert(
            model,
            arch,
            cfg,
            calib,
            train=train,
            device=torch.device(device),
            progress=True,
            monitor=lambda m: perplexity(m, held_out),
        )
        seconds = time.perf_counter() - ts
        s = result["summary"]
        row = {
            "variant": name,
            "options": opts,
            "perplexity": perplexity(model, held_out),
            "kv_heads": model.config.num_key_value_heads,
            "kv_cache_bytes_per_token": kv_cache_bytes_per_token(model),
            "mean_key_energy_kept": s["mean_key_energy_kept"],
            "mean_value_energy_kept": s["mean_value_energy_kept"],
            "seconds": seconds,
        }
        if "finetune" in s:
            row["finetune"] = {k: v for k, v in s["finetune"].items() if k != "history"}
            ratio = [(c["seconds"], c["value"] / original_ppl) for c in s["finetune"]["curve"]]
            within = [t for t, r in ratio if r <= 1.25]
            row["finetune"]["first_seconds_within_1.25x"] = within[0] if within else None
        rows.append(row)
        print(
            f"{name:32s} ppl {row['perplexity']:10.3f}  K kept {row['mean_key_energy_kept']:.3f}  "
            f"V kept {row['mean_value_energy_kept']:.3f}  {seconds:.0f} s"
        )
        del model
    result = {
        "bench": "gqa_smollm2",
        "weights": "real SmolLM2-135M-Instruct",
        "model": args.model,
        "device": device,
        "calib_tokens": int(calib.numel()),
        "held_out_tokens": int(held_out.numel()),
        "seq_len": seq_len,
        "train_tokens": int(train.numel()) if train is not None else int(calib.numel()),
        "text": text,
        "original": {"perplexity": original_ppl, "kv_heads": 3, "kv_cache_bytes_per_token": original_kv},
        "expanded_mha": {"perplexity": mha_ppl, "kv_heads": 9},
        "variants": rows,
        "seconds_total": time.perf_counter() - t0,
        "versions": versions(),
    }
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
