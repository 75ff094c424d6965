"""Where one batch's greedy decode and loss pass spend GPU time: SmolLM2 on WikidataQA prompts.

    python bench/profile_decode.py --device cuda --rows 2048,1024 --out DIR

For each row count: the first (longest) batch of full WikidataQA as `greedy_generate` pads it, and for
each way of computing (`--modes`): "stock" = transformers' own SDPA path and output head as called,
"packed" / "gqa" = inside `eval.fast_paths.fast_forward` with that one-token kernel (what
`greedy_generate` uses on a GPU: "gqa"):
- CUDA-event timings of the captured graphs: one prefill replay and one decode-step replay (median of 20),
  the whole graph decode, the eager static loop, the teacher-forced loss pass (`sequence_nll`);
- rows whose tokens differ from the stock mode's;
- for the last mode, torch.profiler over the batch's eager static loop (the kernels the graphs replay)
  and over the loss pass, the top kernels by device time -> DIR/profile_ROWS.txt.
Summary -> DIR/profile_decode.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from tensorllm.base.devices import eval_dtype, resolve_device
from tensorllm.eval import decoder, fast_paths, get_task, static_decode
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


def _one_mode(model, batch, seqs, n_scored, pad, loop, names) -> tuple[dict, list, list[str]]:
    """Timings (ms), the graph decode's tokens and the profiler tables of one batch, as the model computes
    now."""
    ids, mask, pos = batch
    shape, width = tuple(ids.shape), ids.shape[1]
    tokens = static_decode.graph_greedy(model, ids, mask, pos, **loop, **names)  # capture
    impl = getattr(model.config, "_attn_implementation", None)
    cap = static_decode._CAPTURES[model][(*shape, 10, impl, fast_paths.inside(model))]

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
    eager = lambda: static_decode.static_greedy(model, ids, mask, pos, **loop, **names)  # noqa: E731
    eager()  # warm
    eager_ms = _events_ms(eager, 3)
    nll = lambda: decoder.sequence_nll(  # noqa: E731
        model, seqs, n_scored, pad_id=pad, batch_size=len(seqs), progress=False
    )
    nll()
    loss_ms = _events_ms(nll, 5)
    text = []
    for name, fn in (("eager static decode", eager), ("loss pass", nll)):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        text.append(f"== {name}, {shape[0]} rows x {shape[1]} columns, attention {impl} ==\n")
        text.append(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25))
    timed = {
        "attention": impl,
        "prefill_replay_ms": round(prefill_ms, 3),
        "step_replay_ms": round(step_ms, 3),
        "graph_greedy_ms": round(whole_ms, 3),
        "eager_static_ms": round(eager_ms, 3),
        "loss_pass_ms": round(loss_ms, 3),
    }
    return timed, tokens, text


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", default="2048,1024")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modes", default="stock,gqa,packed")
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
        seqs = [spans[i][0][: spans[i][2]] for i in batch]
        n_scored = [spans[i][2] - spans[i][1] for i in batch]
        entry = {"rows": shape[0], "width": width, "real_rows": len(batch), "modes": {}}
        reference = None
        for mode in args.modes.split(","):
            fast_paths.KERNELS["cuda"] = "gqa" if mode == "stock" else mode
            # stock: sequence_nll's own fast_forward off too
            decoder.fast_forward = (lambda m: nullcontext()) if mode == "stock" else fast_paths.fast_forward
            with decoder.fast_forward(model):
                timed, tokens, text = _one_mode(model, (ids, mask, pos), seqs, n_scored, pad, loop, names)
            reference = tokens if reference is None else reference
            timed["rows_differing_from_first_mode"] = sum(a != b for a, b in zip(tokens, reference))
            entry["modes"][mode] = timed
            print(rows, mode, timed, flush=True)
        fast_paths.KERNELS["cuda"], decoder.fast_forward = "gqa", fast_paths.fast_forward
        (args.out / f"profile_{rows}.txt").write_text("\n".join(text))
        summary["batches"].append(entry)
    (args.out / "profile_decode.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
