"""`steps: [gqa, tucker]` on the real SmolLM2-135M: convert 3 -> 1 K/V heads (aligned, training-free),
then the GQA-aware Tucker of one layer of the converted model (tensor 576 x 64 x 20 x 1, g = 9).

Rows: the original; Tucker alone on the original (tensor 576 x 64 x 8 x 3, R3 = `--r3-original`);
the conversion alone; the conversion then Tucker (R3 = `--r3-converted`, the same share of the block
mode). Each is scored by held-out perplexity (the `--eval-tokens` that follow the calibration
tokens in the default English text) and WikidataQA validation accuracy on `--items` items. The two
steps run one after the other in one process, which tests/methods/gqa/test_gqa_then_tucker.py
checks is the same as the one recipe.

    python bench/gqa_then_tucker.py --layer 16 --calib-tokens 8192 --seq-len 1024 --eval-tokens 8192 \\
        --items 200 --out /tmp/gqa_then_tucker.json
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from common import emit_json

import tensorllm
from tensorllm.eval import evaluate
from tensorllm.eval.measure import perplexity
from tensorllm.methods.gqa.calibrate import calibration_documents, chunk, token_stream
from tensorllm.models.io import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", type=int, default=16)
    p.add_argument("--ranks", default="288,48", help="R1,R2 of both Tucker steps")
    p.add_argument("--r3-original", type=int, default=4, help="of 8 block slots (g = 3)")
    p.add_argument("--r3-converted", type=int, default=10, help="of 20 block slots (g = 9)")
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--items", type=int, default=200, help="WikidataQA validation items")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    tok = loaded.tokenizer
    ids = token_stream(tok, calibration_documents(None))
    held_out = chunk(ids, args.eval_tokens, args.seq_len, offset=args.calib_tokens, what="held-out text")
    r12 = [int(x) for x in args.ranks.split(",")]
    gqa = {"method": "gqa", "kv_heads": args.kv_heads, "calib_tokens": args.calib_tokens}
    gqa["seq_len"] = args.seq_len

    def tucker(r3: int) -> dict:
        return {"method": "tucker", "layers": [args.layer], "ranks": [*r12, r3]}

    rows = []

    def score(name: str, model, steps: list[dict], t0: float, report=None) -> None:
        qa = evaluate(model, tok, "wikidata_qa", "val", limit=args.items, progress=False)
        row = {
            "model": name,
            "steps": steps,
            "kv_heads": model.config.num_key_value_heads,
            "held_out_perplexity": perplexity(model, held_out),
            "wikidata_qa_val": qa.accuracy,
            "seconds_transform": t0,
        }
        if report is not None and steps and steps[-1]["method"] == "tucker":
            rec = report.steps[-1]["layers"][0]
            for key in ("tensor_shape", "params_after", "compression_rate", "rel_error"):
                row[key] = rec[key]
        rows.append(row)
        print(
            f"{name:40s} K/V heads {row['kv_heads']}  perplexity {row['held_out_perplexity']:9.3f}  "
            f"WikidataQA val {row['wikidata_qa_val']:.2f}",
            flush=True,
        )

    def run(model, steps):
        t0 = time.perf_counter()
        recipe = {"device": "cpu", "steps": steps}
        _, report = tensorllm.compress(model, recipe, tokenizer=tok, progress=False)
        return report, time.perf_counter() - t0

    model = loaded.model
    score("original", model, [], 0.0)
    alone = copy.deepcopy(model)
    report, secs = run(alone, [tucker(args.r3_original)])
    score("tucker alone", alone, [tucker(args.r3_original)], secs, report)
    del alone
    report, secs = run(model, [gqa])
    score(f"gqa {args.kv_heads} K/V head(s)", model, [gqa], secs)
    report, secs = run(model, [tucker(args.r3_converted)])
    score("gqa then tucker", model, [gqa, tucker(args.r3_converted)], secs, report)
    result = {"model": "smollm2-135m", "layer": args.layer, "rows": rows, "items": args.items}
    emit_json({**result, "eval_tokens": int(held_out.numel())}, args.out, quiet=True)


if __name__ == "__main__":
    main()
