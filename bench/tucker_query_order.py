"""The GQA-aware Tucker and the order of the query heads inside a group, on the real SmolLM2-135M.

SmolLM2 has 9 query heads in 3 groups (g = 3): tensor (576, 64, 8, 3). For each rank setting of
one layer this compares, by the functional error (relative change of the logits against the
original model on `--tokens` tokens of the default English text):
- stored order: the tensor built from the heads as the checkpoint stores them (tensorllm before the
  canonical order), and the same after `--orders` random reorders of the query heads inside each
  group (each reorder is the same model); `spread` is how far those compressed models lie from the
  stored-order one (relative logits difference);
- canonical: `tensorllm.methods.tucker.compress_layer` (each group's query heads in the order
  `canonical_query_order` reads off their weights; the same result for every reorder);
- expanded: `expand-kv` first (9 K/V heads), then the paper's tensor (576, 64, 4, 9) with R3 halved
  (the same fraction of the block mode); the rebuilt layer has 9 distinct K/V heads;
- expanded, K/V averaged back: that decomposition with each group's 3 rebuilt K (and V) heads
  averaged into one, so that the model stays 3 K/V heads.
For scale, the functional error of the layer without its attention output (o = 0) is printed first:
ranks whose error reaches it have thrown the layer's attention away.
With `--eval N`, WikidataQA validation accuracy on N items for the first rank setting.

    python bench/tucker_query_order.py --layer 9 --ranks '288,48,4;144,32,2;64,16,1' --orders 3 \\
        --eval 200 --out /tmp/tucker_query_order.json
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from common import emit_json

from tensorllm.attention import read_attention, write_attention
from tensorllm.data import default_calibration_text
from tensorllm.methods.tucker import TuckerConfig, compress_layer
from tensorllm.methods.tucker_tensor import from_tensor, permute_query_heads, to_tensor, tucker_params
from tensorllm.models.expand_kv import expand_kv
from tensorllm.models.io import load_model
from tensorllm.tensor.tucker import hooi, reconstruct

CPU = torch.device("cpu")


def stored_order(w, cfg):
    """The GQA-aware Tucker on the heads as stored (what compress_layer did before the canonical order)."""
    wd = w.with_(q=w.q.double(), k=w.k.double(), v=w.v.double(), o=w.o.double())
    t = to_tensor(wd, "multihead")  # (D, d, 2g+2, Hkv)
    res = hooi(t, cfg.ranks, (0, 1, 2), n_iter_max=cfg.n_iter_max, tol=cfg.tol, compute_dtype=t.dtype)
    return from_tensor(reconstruct(res), wd, "multihead"), tucker_params(tuple(t.shape), (0, 1, 2), cfg.ranks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", type=int, default=9)
    p.add_argument("--ranks", default="288,48,4;144,32,2;64,16,1")
    p.add_argument("--orders", type=int, default=3, help="random within-group reorders of the stored order")
    p.add_argument("--tokens", type=int, default=512, help="text tokens the logits are compared on")
    p.add_argument("--eval", type=int, default=0, help="WikidataQA validation items (first rank setting)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    loaded = load_model("smollm2-135m", device="cpu")
    model, arch, tok = loaded.model, loaded.arch, loaded.tokenizer
    ids = tok(default_calibration_text()[: 40 * args.tokens], return_tensors="pt").input_ids
    ids = ids[:, : args.tokens].reshape(-1, 256)  # (n_seq, 256)
    mha = copy.deepcopy(model)
    expand_kv(mha, arch)

    @torch.no_grad()
    def logits(m) -> torch.Tensor:
        return m(input_ids=ids, use_cache=False).logits.double()

    def rel(a, b) -> float:
        return float((a - b).norm() / b.norm())

    def read(m):  # read_attention's tensors share the parameters' storage: a copy outlives later writes
        w = read_attention(m, arch, args.layer)
        return w.with_(**{k: getattr(w, k).clone() for k in ("q", "k", "v", "o")})

    def with_layer(m, w, fn):
        """fn(m) with layer `args.layer` of `m` replaced by `w`, then restored."""
        old = read(m)
        write_attention(m, arch, args.layer, w)
        try:
            return fn(m)
        finally:
            write_attention(m, arch, args.layer, old)

    def accuracy(m) -> float:
        from tensorllm.eval import evaluate

        return evaluate(m, tok, "wikidata_qa", "val", limit=args.eval, progress=False).accuracy

    ref = logits(model)
    w = read(model)
    ablated = rel(with_layer(model, w.with_(o=torch.zeros_like(w.o)), logits), ref)  # no attention output
    print(f"L{args.layer} without its attention output (o = 0): functional error {ablated:.4f}", flush=True)
    wm = read(mha)
    H, Hkv, d = w.heads, w.kv_heads, w.head_dim
    g = H // Hkv
    gen = torch.Generator().manual_seed(0)
    rows, evals = [], {}
    if args.eval:
        evals["original"] = accuracy(model)
    for n, text in enumerate(s for s in args.ranks.split(";") if s.strip()):
        ranks = tuple(int(x) for x in text.split(","))
        cfg = TuckerConfig(layers=(args.layer,), ranks=ranks, tol=1e-5)
        t0 = time.perf_counter()
        new, params = stored_order(w, cfg)
        base = with_layer(model, new, logits)
        errs, spread = [rel(base, ref)], []
        for _ in range(args.orders):
            order = [j * g + i for j in range(Hkv) for i in torch.randperm(g, generator=gen).tolist()]
            out = with_layer(model, stored_order(permute_query_heads(w, order), cfg)[0], logits)
            errs.append(rel(out, ref))
            spread.append(rel(out, base))
        row = {
            "layer": args.layer,
            "ranks": list(ranks),
            "params_after": params,
            "stored_order": errs[0],
            "stored_reordered": errs[1:],
            "stored_spread": spread,
        }
        canon, rec = compress_layer(w, cfg, CPU)
        row["canonical"] = rel(with_layer(model, canon, logits), ref)
        row["query_order"] = rec["query_order"]
        half = (ranks[0], ranks[1], max(1, ranks[2] // 2))
        small = TuckerConfig(layers=(args.layer,), ranks=half, tol=1e-5)
        wide, rec_m = compress_layer(wm, small, CPU)
        row["expanded_ranks"], row["expanded_params_after"] = rec_m["ranks"], rec_m["params_after"]
        row["expanded"] = rel(with_layer(mha, wide, logits), ref)
        kv = {n_: getattr(wide, n_).reshape(Hkv, g, d, -1).mean(1).reshape(Hkv * d, -1) for n_ in "kv"}
        averaged = w.with_(q=wide.q, o=wide.o, k=kv["k"], v=kv["v"])  # written in the model's dtype
        row["expanded_kv_averaged"] = rel(with_layer(model, averaged, logits), ref)
        if args.eval and n == 0:
            evals.update(
                stored_order=with_layer(model, new, accuracy),
                canonical=with_layer(model, canon, accuracy),
                expanded=with_layer(mha, wide, accuracy),
                expanded_kv_averaged=with_layer(model, averaged, accuracy),
            )
            row["wikidata_qa_val"] = evals
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"L{args.layer} {ranks}: stored {errs[0]:.4f} (reorders {min(errs):.4f}..{max(errs):.4f}, "
            f"spread up to {max(spread, default=0):.4f}), canonical {row['canonical']:.4f}, "
            f"expanded {row['expanded']:.4f}, K/V averaged {row['expanded_kv_averaged']:.4f}  "
            f"{row['seconds']:.0f} s",
            flush=True,
        )
    assert rel(logits(model), ref) == 0.0, "the model was not restored"
    result = {"model": "smollm2-135m", "tokens": int(ids.numel()), "rows": rows, "attention_removed": ablated}
    emit_json({**result, "eval_items": args.eval}, args.out, quiet=True)


if __name__ == "__main__":
    main()
