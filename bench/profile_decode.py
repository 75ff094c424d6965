"""Where one batch's greedy decode and loss pass spend GPU time: SmolLM2 on WikidataQA prompts.

    python bench/profile_decode.py --device cuda --rows 2048,1024 --out DIR

For each row count: the first (longest) batch of full WikidataQA as `greedy_generate` pads it, then
- CUDA-event timings of the captured graphs: one prefill replay and one decode-step replay (median of 20);
- torch.profiler over the same batch's eager static loop (the kernels the graphs replay) and over the
  teacher-forced loss pass (`sequence_nll`), the top kernels by device time -> DIR/profile_ROWS.txt.
Summary -> DIR/profile_decode.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from tensorllm.base.devices import eval_dtype, resolve_device
from tensorllm.eval import decoder, get_task, static_decode
from tensorllm.eval.items import task_items
from tensorllm.eval.scoring import _decoder_ids
from tensorllm.eval.tokens import answer_spans, encode
from tensorllm.models.io import load_model


def _events_ms(fn, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", default="2048,1024")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = resolve_device(args.device)
    loaded = load_model(args.model, dtype=eval_dtype("auto", device), device=str(device))
    model, tok = loaded.model, loaded.tokenizer
    items = task_items(tok, get_task("wikidata_qa"), "all", None, None)[0]
    prompts = encode(tok, [e.prompt for e in items])
    spans = answer_spans(tok, [e.prompt for e in items], [e.answer for e in items])
    eos_ids, pad = _decoder_ids(model, tok)
    eos = torch.tensor(eos_ids, device=device)
    names = dict(params=decoder.forward_params(model), cache_arg=decoder.cache_argument(model))
    loop = dict(max_new_tokens=10, eos=eos, pad_id=pad, min_new_tokens=1)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"model": args.model, "gpu": torch.cuda.get_device_name(device), "batches": []}
    for rows in [int(r) for r in args.rows.split(",")]:
        batch = decoder.length_batches([len(p) for p in prompts], rows, 1 << 30)[0]
        ids, mask, pos = decoder.left_pad([prompts[i] for i in batch], pad, device)
        shape = (static_decode.bucket_rows(len(batch)), static_decode.bucket_width(ids.shape[1]))
        ids, mask, pos = static_decode.pad_batch(ids, mask, pos, *shape, pad)
        width = shape[1]
        static_decode.graph_greedy(model, ids, mask, pos, **loop, **names)  # capture
        cap = static_decode._CAPTURES[model][(*shape, 10)]

        def prefill():
            cap.cache.reset()  # the cache's write position is a device counter each replay advances
            cap.prefill_graph.replay()

        def prefill_and_steps():
            prefill()
            for step in range(9):
                cap.column.fill_(width + step)
                cap.step_graph.replay()

        prefill_ms = _events_ms(prefill)
        step_ms = (_events_ms(prefill_and_steps) - prefill_ms) / 9
        whole_ms = _events_ms(lambda: static_decode.graph_greedy(model, ids, mask, pos, **loop, **names), 5)
        static_decode.static_greedy(model, ids, mask, pos, **loop, **names)  # warm
        eager_ms = _events_ms(lambda: static_decode.static_greedy(model, ids, mask, pos, **loop, **names), 3)
        seqs = [spans[i][0][: spans[i][2]] for i in batch]
        n_scored = [spans[i][2] - spans[i][1] for i in batch]
        nll = lambda: decoder.sequence_nll(model, seqs, n_scored, pad_id=pad, batch_size=rows, progress=False)  # noqa: E731
        nll()
        loss_ms = _events_ms(nll, 5)
        text = []
        for name, fn in (
            (
                "eager static decode",
                lambda: static_decode.static_greedy(model, ids, mask, pos, **loop, **names),
            ),
            ("loss pass", nll),
        ):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            text.append(f"== {name}, {shape[0]} rows x {shape[1]} columns ==\n")
            text.append(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25))
        (args.out / f"profile_{rows}.txt").write_text("\n".join(text))
        entry = {
            "rows": shape[0],
            "width": shape[1],
            "real_rows": len(batch),
            "prefill_replay_ms": round(prefill_ms, 3),
            "step_replay_ms": round(step_ms, 3),
            "graph_greedy_ms": round(whole_ms, 3),
            "eager_static_ms": round(eager_ms, 3),
            "loss_pass_ms": round(loss_ms, 3),
        }
        print(entry)
        summary["batches"].append(entry)
    (args.out / "profile_decode.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
