"""Benchmark: streamed Tucker / LASER (tensorllm.streamed) on LLaMA-shaped random bfloat16 checkpoints
written as shards, with the memory bound measured.

For each shape: write a random checkpoint (config.json + 5 GB shards, tensor by tensor, never a whole
model in memory), then per method run `compress_streamed` on every layer in a fresh child process and
record its wall time, the read / compute / write / copy split, its peak RSS (the child's own
`ru_maxrss`, and psutil sampling from here) and peak GPU memory; the output is deleted after each run
and the input after its shape (disk). `--compare` also runs the in-memory path (`load_model` +
`compress` + `save_checkpoint`) for the first shape and checks every output tensor bitwise and the two
outputs' logits on a prompt.

    python bench/stream_bench.py --shapes 7b --methods tucker --device cpu --dir /data/sb --out r.json
    python bench/stream_bench.py --shapes 13b,7b,1b --methods tucker,laser --device cuda --dir $S/sb
    python bench/stream_bench.py --shapes tiny --methods tucker,laser --device cpu --compare --out r.json

Tucker: ranks (hidden/4, head_dim/2, 3) as bench/tucker_7b.py, float32 compute, tol 1e-4; LASER: the
FFN up matrix, rho 0.1, randomised SVD with a seed (exact SVD of 40 13824 x 5120 matrices would not fit
the GPU call); gqa: the streamed MHA -> GQA conversion to 8 K/V heads on 128 x 2048 tokens of random
words (toy: 4 -> 1 heads, 8 x 32 tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import emit_json

SHAPES = {  # LLaMA(-2) dimensions; "1b" uses head_dim 128 like 7B/13B (22 layers as TinyLlama)
    "tiny": dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=256
    ),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=16),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
}


def recipe(method: str, shape: dict, device: str, folder: Path) -> dict:
    d = shape["hidden_size"] // shape["num_attention_heads"]
    if method == "gqa":  # the 40 -> 8 K/V heads on 128 x 2048 tokens (toy: 4 -> 1 on 8 x 32)
        heads, toy = shape["num_attention_heads"], shape["hidden_size"] < 1024
        step = {"method": "gqa", "kv_heads": 8 if heads > 8 else heads // 4, "seq_len": 32 if toy else 2048}
        step.update(calib_tokens=256 if toy else 128 * 2048, calib_file=str(_calib_text(folder, shape)))
        return {"device": device, "steps": [step]}
    steps = {
        "tucker": {"method": "tucker", "layers": "all", "ranks": [shape["hidden_size"] // 4, d // 2, 3]},
        "laser": {
            "method": "laser",
            "layers": "all",
            "matrix": "up",
            "rho": 0.1,
            "svd": "randomized",
            "seed": 0,
        },
    }[method]
    if method == "tucker":
        steps.update(compute_dtype="float32", tol=1e-4)
    return {"device": device, "steps": [steps]}


def write_checkpoint(name: str, folder: Path, device: str, shard_size: str) -> dict:
    """A random bf16 checkpoint of shape `name` in `folder` (reused when already complete)."""
    import torch
    import transformers

    from tensorllm.archs import spec_for
    from tensorllm.models.shards import Planned, ShardWriter, dtype_code, parse_size, plan_shards

    done = folder / "bench-shape.json"
    if done.is_file() and json.loads(done.read_text()) == {"shape": name}:
        return {"reused": True, "bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors"))}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = transformers.LlamaConfig(**SHAPES[name], tie_word_embeddings=False, dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]
    spec_for(config)
    config.save_pretrained(folder)
    _tokenizer(config.vocab_size).save_pretrained(folder)  # the in-memory path (--compare) loads one
    with torch.device("meta"):
        shapes = transformers.LlamaForCausalLM(config).to(torch.bfloat16).state_dict()
    code = dtype_code(torch.bfloat16)
    entries = [Planned(k, code, tuple(v.shape), v.numel() * 2) for k, v in shapes.items()]
    writer = ShardWriter(folder, plan_shards(entries, parse_size(shard_size)))
    gen = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    for k, v in shapes.items():
        if v.ndim == 1:  # norm scales
            t = torch.ones(v.shape, dtype=torch.bfloat16)
        else:
            t = (0.02 * torch.randn(v.shape, generator=gen, device=device)).to(torch.bfloat16)
        writer.write(k, t)
    writer.finish()
    done.write_text(json.dumps({"shape": name}))
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {"reused": False, "bytes": size, "seconds": time.perf_counter() - t0}


def _calib_text(folder: Path, shape: dict) -> Path:
    """Random words of the bench tokenizer, in paragraphs: more tokens than the gqa step reads."""
    import random

    path = folder.parent / f"calib-{shape['vocab_size']}.txt"
    if not path.is_file():
        rng = random.Random(0)
        paragraphs = [
            " ".join(f"w{rng.randrange(3, shape['vocab_size'])}" for _ in range(1000)) for _ in range(300)
        ]
        path.write_text("\n\n".join(paragraphs))
    return path


def _tokenizer(vocab: int):
    """A word-level tokenizer over the ids (the weights are random; any text maps to some ids)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


def child(args) -> None:
    """One streamed (or in-memory) run, or the comparison of two outputs, in this process; to --out."""
    import torch

    from tensorllm.base.memory import peak_rss_bytes

    if args.child == "compare":  # here, not in the parent: its RSS would pass to every later child
        return emit_json(compare(Path(args.dir), Path(args.target), args.recipe), Path(args.out), quiet=True)
    rec = json.loads(args.recipe)
    t0 = time.perf_counter()
    if args.child == "stream":
        from tensorllm.streamed import compress_streamed

        _, report = compress_streamed(args.dir, rec, Path(args.target), progress=False)
        extra = report.extra["stream"]
    else:
        import tensorllm

        loaded = tensorllm.load_model(args.dir, device=rec["device"])
        _, report = tensorllm.compress(loaded, rec, progress=False)
        tensorllm.save_checkpoint(loaded, Path(args.target))
        dev = torch.device(rec["device"])
        extra = {
            "peak_rss_bytes": peak_rss_bytes(),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        }
    summary = report.steps[0]["summary"]
    means = {k: v for k, v in summary.items() if k.startswith("mean_")}  # errors / energies kept
    result = {**extra, "wall_s": time.perf_counter() - t0, **means}
    emit_json(result, Path(args.out), quiet=True)


def run_child(mode: str, folder: Path, target: Path, rec, timeout: float) -> dict:
    """Run one child, sampling its RSS with psutil; return its result plus the sampled peak."""
    try:
        import psutil
    except ImportError:  # then only the child's own ru_maxrss
        psutil = None
    out = target.with_name(target.name + ".json")
    cmd = [sys.executable, __file__, "--child", mode, "--dir", str(folder), "--target", str(target)]
    cmd += ["--recipe", rec if isinstance(rec, str) else json.dumps(rec), "--out", str(out)]
    proc = subprocess.Popen(cmd)
    peak = [0]

    def sample() -> None:
        if psutil is None:
            return
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], p.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    sampler.join()
    if rc != 0:
        return {"error": f"exit {rc}", "psutil_peak_rss_bytes": peak[0]}
    result = json.loads(out.read_text())
    out.unlink()
    return {**result, "psutil_peak_rss_bytes": peak[0]}


def compare(a: Path, b: Path, device: str) -> dict:
    """Every tensor of the two outputs bitwise, and their logits on a prompt."""
    import torch
    import transformers
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                out.update({k: fh.get_tensor(k) for k in fh.keys()})
        return out

    ta, tb = tensors(a), tensors(b)
    same = sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    del ta, tb
    logits = []
    for folder in (a, b):
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=gen).to(device)
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits.float().cpu())
        del model
    return {"tensors_identical": same, "logits_identical": bool(torch.equal(*logits))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny", help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--methods", default="tucker", help="comma list of tucker, laser, gqa")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dir", default="/tmp/stream_bench", help="where checkpoints and outputs are written")
    p.add_argument("--shard-size", default="5GB")
    p.add_argument("--compare", action="store_true", help="in-memory path too, first shape: outputs compared")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints written")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--layers", default="all", help="the layers the steps select (default all)")
    p.add_argument("--child", choices=["stream", "memory", "compare"], help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import torch

    from tensorllm.base.versions import versions

    root = Path(args.dir)
    result = {
        "versions": versions(),
        "device": args.device,
        "cpu_threads": torch.get_num_threads(),
        "shapes": {},
    }
    for n, name in enumerate(args.shapes.split(",")):
        folder = root / f"ckpt-{name}"
        row = {
            "config": SHAPES[name],
            "write_input": write_checkpoint(name, folder, args.device, args.shard_size),
        }
        headers = [_header(f) for f in folder.glob("*.safetensors")]  # what was written
        row["params"] = sum(math.prod(v["shape"]) for h in headers for v in h.values())
        print(
            f"{name}: {row['params'] / 1e9:.2f}B parameters, {row['write_input']['bytes'] / 1e9:.1f} GB",
            flush=True,
        )
        for method in args.methods.split(","):
            rec = recipe(method, {"vocab_size": 32000, **SHAPES[name]}, args.device, folder)
            if "layers" in rec["steps"][0]:
                rec["steps"][0]["layers"] = args.layers
            target = root / f"out-{name}-{method}"
            shutil.rmtree(target, ignore_errors=True)
            row[method] = run_child("stream", folder, target, rec, args.timeout)
            print(f"  {method}: {json.dumps(row[method])}", flush=True)
            if args.compare and n == 0:
                mem = root / f"mem-{name}-{method}"
                shutil.rmtree(mem, ignore_errors=True)
                row[f"{method}_in_memory"] = run_child("memory", folder, mem, rec, args.timeout)
                ok = "error" not in row[method] and "error" not in row[f"{method}_in_memory"]
                cmp = (
                    run_child("compare", target, mem, args.device, args.timeout) if ok else {"error": "a run"}
                )
                row[f"{method}_compare"] = {k: v for k, v in cmp.items() if k != "psutil_peak_rss_bytes"}
                print(f"  {method} vs in-memory: {row[f'{method}_compare']}", flush=True)
                shutil.rmtree(mem, ignore_errors=True)
            shutil.rmtree(target, ignore_errors=True)
            result["shapes"][name] = row
            emit_json(result, args.out, quiet=True)  # after every run: a timeout keeps what was measured
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            for text in root.glob("calib-*.txt"):
                text.unlink()
    emit_json(result, args.out)


def _header(f: Path) -> dict:
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header


if __name__ == "__main__":
    main()
