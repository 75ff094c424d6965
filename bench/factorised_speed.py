"""Where factorised attention pays: dense vs factorised projections and whole-model prefill/decode.

    python bench/factorised_speed.py --out runs/fact_speed.json            # CUDA: 7B and SmolLM2 shapes
    python bench/factorised_speed.py --small --out /tmp/f.json             # CPU, tiny: checks the script
    python bench/factorised_speed.py --device cpu --shapes smollm2 --out runs/fact_cpu.json

Shapes: LLaMA-2-7B (D 4096, 32 heads, 32 K/V heads, head_dim 128, 32 layers) and SmolLM2-135M (D 576,
9 heads, 3 K/V heads, head_dim 64, 30 layers); multi-head Tucker ranks for per-layer attention rates
2x..50x (the largest ranks proportional to the mode sizes reaching the rate, tucker_tensor.ranks_for_rate).
Random weights and factors: speed does not depend on their values.

1. `projections`: one layer's q, k, v and o (transformers' four Linear calls) against runtime's
   TuckerAttention (x U1 once, the cores, U2; o through U2, the cores, U1^T), for decode (batch 1 and
   16, one token) and prefill (batch 1, `--prefill` tokens); median of CUDA-event (CPU: wall) timings.
   `crossover`: per shape and token count, the lowest rate (largest ranks) at which factorised is faster.
2. `models`: the whole model (LlamaForCausalLM from its config) dense, then with every layer's attention
   factorised at each rate (modules swapped in place, the FFN shared): prefill of `--prefill` tokens and
   greedy `generate` of `--new-tokens` tokens (eager, batch 1 and 16, tokens/s), with the weights'
   resident bytes (measured: CUDA allocator / unique storages) and the generate call's peak allocation.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import emit_json  # bench/common.py

from tensorllm.methods.tucker_tensor import ranks_for_rate
from tensorllm.runtime.factorised_modules import FactorProjection, TuckerAttention

SHAPES = {  # D, H, Hkv, d, layers, FFN width, vocab
    "llama2-7b": (4096, 32, 32, 128, 32, 11008, 32000),
    "smollm2": (576, 9, 3, 64, 30, 1536, 49152),
    "tiny": (64, 4, 2, 16, 2, 128, 256),
}
RATES = (2, 3, 5, 10, 20, 50)


def timed(fn, *, cuda: bool, n: int, warm: int) -> float:
    """Median milliseconds of `fn()`."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def tucker_ranks(shape: str, rate: float) -> tuple[int, int, int]:
    D, H, Hkv, d = SHAPES[shape][:4]
    t_shape = (D, d, 2 * (H // Hkv) + 2, Hkv)
    return ranks_for_rate(t_shape, (0, 1, 2), rate, math.prod(t_shape))


def entry(shape: str, ranks) -> dict:
    D, H, Hkv, d = SHAPES[shape][:4]
    return {"hidden": D, "heads": H, "kv_heads": Hkv, "head_dim": d, "ranks": list(ranks), "form": "blocks"}


def random_tucker(shape: str, ranks, dev, dt) -> TuckerAttention:
    owner = TuckerAttention(entry(shape, ranks), torch.empty(0, device=dev, dtype=dt))
    with torch.no_grad():
        for p in owner.parameters():
            p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    return owner


def projections(shape: str, dev, dt, cuda: bool, args) -> list[dict]:
    D, H, Hkv, d = SHAPES[shape][:4]
    gen = torch.Generator(device=dev).manual_seed(0)
    w = {
        n: torch.randn(o, i, device=dev, dtype=dt, generator=gen) / math.sqrt(i)
        for n, (o, i) in {"q": (H * d, D), "k": (Hkv * d, D), "v": (Hkv * d, D), "o": (D, H * d)}.items()
    }
    cases = {"decode_b1": (1, 1), "decode_b16": (16, 1), f"prefill_{args.prefill}": (1, args.prefill)}
    rows = []
    for case, (B, T) in cases.items():
        x = torch.randn(B, T, D, device=dev, dtype=dt, generator=gen)
        a = torch.randn(B, T, H * d, device=dev, dtype=dt, generator=gen)

        def dense():
            return F.linear(x, w["q"]), F.linear(x, w["k"]), F.linear(x, w["v"]), F.linear(a, w["o"])

        base = timed(dense, cuda=cuda, n=args.repeats, warm=args.warmup)
        dense_bytes = sum(t.numel() * t.element_size() for t in w.values())
        for rate in RATES:
            ranks = tucker_ranks(shape, rate)
            owner = random_tucker(shape, ranks, dev, dt)
            projs = [FactorProjection(owner, p, False) for p in "qkvo"]

            def fact():
                return projs[0](x), projs[1](x), projs[2](x), projs[3](a)

            ms = timed(fact, cuda=cuda, n=args.repeats, warm=args.warmup)
            fbytes = sum(p.numel() * p.element_size() for p in owner.parameters())
            rows.append(
                {
                    "shape": shape,
                    "case": case,
                    "rate": rate,
                    "ranks": list(ranks),
                    "dense_ms": round(base, 4),
                    "factorised_ms": round(ms, 4),
                    "speedup": round(base / ms, 3),
                    "dense_weight_bytes": dense_bytes,
                    "factor_bytes": fbytes,
                }
            )
            print(rows[-1], flush=True)
    return rows


def crossover(rows: list[dict]) -> dict:
    """Per shape and case: the lowest rate at which factorised is faster than dense (None: never)."""
    out = {}
    for r in rows:
        key = f"{r['shape']} {r['case']}"
        out.setdefault(key, None)
        if r["speedup"] > 1 and (out[key] is None or r["rate"] < out[key]["rate"]):
            out[key] = {"rate": r["rate"], "ranks": r["ranks"], "speedup": r["speedup"]}
    return out


def build_model(shape: str, dev, dt):
    import transformers

    D, H, Hkv, d, L, ffn, vocab = SHAPES[shape]
    cfg = transformers.LlamaConfig(
        hidden_size=D,
        num_attention_heads=H,
        num_key_value_heads=Hkv,
        head_dim=d,
        num_hidden_layers=L,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(dev):
        model = transformers.LlamaForCausalLM._from_config(cfg, dtype=dt)
    return model.eval()


def resident_bytes(model, cuda: bool) -> int:
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    seen = {}
    for p in model.parameters():
        seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(seen.values())


def set_attention(model, shape: str, rate: float | None, dev, dt, saved: dict) -> None:
    """Every layer's q/k/v/o: random factors at `rate`, or (None) the dense modules back. The dense
    modules wait on the CPU meanwhile, so the device holds only what the factorised model needs."""
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if i not in saved:
            saved[i] = {p: getattr(attn, f"{p}_proj").to("cpu") for p in "qkvo"}
        if rate is None:
            for p, mod in saved.pop(i).items():
                setattr(attn, f"{p}_proj", mod.to(dev))
            attn._modules.pop("tucker", None)
            continue
        attn.tucker = random_tucker(shape, tucker_ranks(shape, rate), dev, dt)
        for p in "qkvo":
            setattr(attn, f"{p}_proj", FactorProjection(attn.tucker, p, False))


def model_rows(shape: str, dev, dt, cuda: bool, args) -> list[dict]:
    model = build_model(shape, dev, dt)
    vocab = SHAPES[shape][6]
    gen = torch.Generator().manual_seed(1)
    long = torch.randint(3, vocab, (1, args.prefill), generator=gen).to(dev)
    rows, saved = [], {}
    for rate in (None, *RATES):
        if rate is not None:
            set_attention(model, shape, rate, dev, dt, saved)
        if cuda:
            torch.cuda.empty_cache()
        row = {"shape": shape, "rate": rate or 1, "weights_bytes": resident_bytes(model, cuda)}
        with torch.no_grad():
            row["prefill_ms"] = round(
                timed(
                    lambda: model(input_ids=long, use_cache=False),
                    cuda=cuda,
                    n=max(3, args.repeats // 10),
                    warm=2,
                ),
                3,
            )
            for batch in (1, 16):
                prompt = torch.randint(3, vocab, (batch, 16), generator=gen).to(dev)
                kw = dict(
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=0,
                    attention_mask=torch.ones_like(prompt),
                )
                model.generate(prompt, **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                ms = timed(lambda: model.generate(prompt, **kw), cuda=cuda, n=args.gen_repeats, warm=0)
                row[f"decode_b{batch}_tokens_per_s"] = round(batch * args.new_tokens / ms * 1000, 1)
                if cuda:
                    row[f"decode_b{batch}_peak_bytes"] = torch.cuda.max_memory_allocated()
        rows.append(row)
        print(row, flush=True)
    return rows  # the model goes with the frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CPU, float32, the tiny shape, few repeats")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--shapes", default=None, help="comma-separated: llama2-7b, smollm2, tiny")
    ap.add_argument("--prefill", type=int, default=None, help="prefill tokens (default 2048; --small 32)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 64; --small 4)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--skip-models", action="store_true", help="the projection micro-benchmark only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device or ("cpu" if args.small or not torch.cuda.is_available() else "cuda"))
    cuda = dev.type == "cuda"
    dt = torch.bfloat16 if cuda else torch.float32
    shapes = (args.shapes or ("tiny" if args.small else "llama2-7b,smollm2")).split(",")
    args.prefill = args.prefill or (32 if args.small else 2048)
    args.new_tokens = args.new_tokens or (4 if args.small else 64)
    args.repeats = args.repeats or (3 if args.small else (50 if cuda else 10))
    args.warmup, args.gen_repeats = (1, 1) if args.small else (10 if cuda else 2, 3)
    t0 = time.perf_counter()
    import transformers

    result = {
        "bench": "factorised_speed",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(dt),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "prefill_tokens": args.prefill,
        "new_tokens": args.new_tokens,
        "projections": [],
        "crossover": {},
        "models": [],
    }

    def emit() -> None:  # after every stage: a timeout still leaves what was measured
        result["seconds"] = round(time.perf_counter() - t0, 1)
        emit_json(result, args.out, quiet=True)

    for s in shapes:
        result["projections"] += projections(s, dev, dt, cuda, args)
        result["crossover"] = crossover(result["projections"])
        emit()
    for s in [] if args.skip_models else shapes:
        try:
            result["models"] += model_rows(s, dev, dt, cuda, args)
        except Exception as exc:  # keep the other shape's numbers (and say why this one has none)
            result["models"].append({"shape": s, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(result["models"][-1], flush=True)
        emit()


if __name__ == "__main__":
    main()
