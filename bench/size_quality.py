"""The size-quality curve (issue 16, item 7): held-out perplexity and WikidataQA test accuracy against total
parameters and file size, for the attention of every layer compressed to a budget.

    python bench/size_quality.py --out runs/size_quality.json --plot runs/size_quality.png   # SmolLM2
    python bench/size_quality.py --model DIR --small --out /tmp/sq.json    # any small checkpoint: checks it

Methods, each at every budget F (the fraction of the attention parameters kept over the whole model,
ranks allocated per layer, methods/budget.py), each without and with recovery (--recover steps):
- `svd`: per-matrix truncated SVD of q, k, v and o (LASER on each, the peers' baseline);
- `svd_whitened`: the same, whitened by each matrix's input second moment (SVD-LLM's whitening);
- `tucker`: the multi-head Tucker (TensorLLM, data-free);
- `tucker_calibrated`: the data-aware Tucker (mode 1 whitened, --calibrate).
Text (tensorllm.data.default_calibration_text): calibration = its first --calib-tokens tokens, recovery
= its first tokens too, perplexity = the --eval-tokens after everything the methods read. Parameters are
counted on the model, the file size measured on the factorised checkpoint written to a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import emit_json  # bench/common.py

import tensorllm
from tensorllm.eval.measure import perplexity
from tensorllm.methods import whiten
from tensorllm.methods.gqa.calibrate import calibration_documents, chunk, token_stream
from tensorllm.runtime.factorised import factorise, save_factorised
from tensorllm.runtime.recover import recover

METHODS = ("svd", "svd_whitened", "tucker", "tucker_calibrated")


def steps_for(method: str, budget: float, calib: int) -> list[dict]:
    cal = {"calibrate": calib} if method.endswith(("whitened", "calibrated")) else {}
    if method.startswith("svd"):
        return [{"method": "laser", "layers": "all", "matrix": m, "budget": budget, **cal} for m in "qkvo"]
    return [{"method": "tucker", "layers": "all", "budget": budget, **cal}]


def file_bytes(loaded, spec) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="size-quality-"))
    try:
        out = save_factorised(loaded, spec, tmp / "f")
        return sum(p.stat().st_size for p in out.glob("*.safetensors"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(model, tokenizer, heldout, args) -> dict:
    row = {"params": sum(p.numel() for p in model.parameters()), "perplexity": perplexity(model, heldout)}
    if args.qa_limit:
        from tensorllm.eval.evaluate import evaluate

        res = evaluate(model, tokenizer, "wikidata_qa", "test", args.qa_limit, progress=False)
        row["wikidata_qa_test_accuracy"] = res.accuracy
    return row


def plot(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    keys = ["perplexity"] + (["wikidata_qa_test_accuracy"] if result["qa_limit"] else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method in METHODS:
            for rec in sorted({r["recover_steps"] for r in result["rows"]}):
                pts = sorted(
                    (r["params"], r[key])
                    for r in result["rows"]
                    if r["method"] == method and r["recover_steps"] == rec
                )
                if pts:
                    ax.plot(
                        *zip(*pts),
                        marker="o",
                        ls="--" if rec else "-",
                        label=f"{method}{f' + recovery {rec}' if rec else ''}",
                    )
        ax.axhline(result["original"][key], color="k", lw=0.8, label="original")
        ax.set_xlabel("total parameters")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_yscale("log" if key == "perplexity" else "linear")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result['model']}: attention compressed over all layers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def merge(paths: list[Path]) -> dict:
    """One result from runs of the same model and settings that each did some of the methods (run at once)."""
    import json

    parts = [json.loads(p.read_text()) for p in paths]
    same = ("model", "device", "qa_limit", "calib_tokens", "eval_tokens", "heldout_offset")
    for p, part in zip(paths[1:], parts[1:]):
        if any(part[k] != parts[0][k] for k in same):
            raise SystemExit(f"{p}: not the same model or settings as {paths[0]}")
    return {
        **parts[0],
        "rows": [r for part in parts for r in part["rows"]],
        "seconds": max(part["seconds"] for part in parts),
        "merged_from": [p.name for p in paths],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budgets", default="0.5,0.35,0.2,0.1")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--recover", type=int, default=200, help="recovery steps of the 'with recovery' rows (0: none)"
    )
    ap.add_argument("--calib-tokens", type=int, default=32768)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--qa-limit", type=int, default=1000, help="WikidataQA test items (0: skip)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--small", action="store_true", help="one budget, 2 recovery steps, few tokens, no QA")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="combine these result JSONs (one per --methods) into --out/--plot",
    )
    args = ap.parse_args()
    if args.merge:
        merged = merge(args.merge)
        emit_json(merged, args.out, quiet=True)
        if args.plot:
            plot(merged, args.plot)
        return
    if args.small:
        args.budgets, args.recover, args.calib_tokens, args.eval_tokens, args.qa_limit = "0.5", 2, 256, 256, 0
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    base = tensorllm.load_model(args.model, dtype="float32", device=dev)
    ids = token_stream(base.tokenizer, calibration_documents(None))
    read = max(args.calib_tokens, min(args.recover * 4 * whiten.SEQ_LEN, 1 << 17))  # what the methods read
    heldout = chunk(ids, args.eval_tokens, whiten.SEQ_LEN, offset=read, what="held-out perplexity")
    result = {
        "bench": "size_quality",
        "model": args.model,
        "device": dev,
        "qa_limit": args.qa_limit,
        "calib_tokens": args.calib_tokens,
        "eval_tokens": args.eval_tokens,
        "heldout_offset": read,
        "original": measure(base.model, base.tokenizer, heldout, args),
        "rows": [],
    }
    result["original"]["file_bytes"] = sum(p.stat().st_size for p in base.path.glob("*.safetensors"))
    for method in args.methods.split(","):
        for budget in (float(b) for b in args.budgets.split(",")):
            loaded = copy.copy(base)
            loaded.model = copy.deepcopy(base.model)
            kept: list = []
            recipe = {"device": dev, "steps": steps_for(method, budget, args.calib_tokens)}
            tensorllm.compress(loaded, recipe, factors=kept, progress=False)
            spec, summary = factorise(loaded, kept)
            size = file_bytes(loaded, spec)
            for rec_steps in sorted({0, args.recover}):  # without, then with recovery (on the same factors)
                row = {"method": method, "budget": budget, "recover_steps": rec_steps, "storage": summary}
                if rec_steps:
                    tokens = whiten.calibration_tokens(base.tokenizer, read, None)
                    r = recover(loaded.model, base.model, spec, tokens, steps=rec_steps, progress=False)
                    row["recovery"] = {k: r[k] for k in ("kl_first", "kl_last_tenth", "seconds")}
                row.update(measure(loaded.model, base.tokenizer, heldout, args), file_bytes=size)
                result["rows"].append(row)
                print({k: v for k, v in row.items() if k != "storage"}, flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit_json(result, args.out, quiet=True)
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
