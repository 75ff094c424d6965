"""Data-free `auto` Tucker ranks: singular values from the Gram matrix vs a full SVD, SmolLM2's layers.

    python bench/auto_ranks_speed.py                 # CPU, real SmolLM2-135M, GQA-aware tensor
    python bench/auto_ranks_speed.py --expand-kv     # the 9-K/V-head multi-head expansion

For every layer and compressed mode: time `torch.linalg.svdvals` of the unfolding and
`tensorllm.methods.tucker.singular_values`, and check that the Gavish-Donoho rank is the same.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import emit_json  # bench/common.py

from tensorllm.attention import read_attention
from tensorllm.methods import tucker_tensor as T
from tensorllm.models.io import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--expand-kv", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    loaded = load_model(args.model, dtype="float32", device="cpu")
    if args.expand_kv:
        from tensorllm.models.expand_kv import expand_kv

        expand_kv(loaded.model, loaded.arch)
    modes = T.compressed_modes("multihead")
    svd_s = gram_s = 0.0
    differ = []
    for i in range(loaded.model.config.num_hidden_layers):
        t = T.to_tensor(read_attention(loaded.model, loaded.arch, i), "multihead")
        for m in modes:
            if t.shape[m] <= T.AUTO_WHOLE_MODES:  # auto_ranks keeps these whole
                continue
            mat = t.movedim(m, 0).reshape(t.shape[m], -1).double()  # (I_m, prod(others))
            a = time.perf_counter()
            s1 = torch.linalg.svdvals(mat)
            b = time.perf_counter()
            s2 = T.singular_values(mat)
            c = time.perf_counter()
            svd_s, gram_s = svd_s + b - a, gram_s + c - b
            if T.gavish_donoho_rank(s1, *mat.shape) != T.gavish_donoho_rank(s2, *mat.shape):
                differ.append([i, m])
    emit_json(
        {
            "bench": "auto_ranks_speed",
            "model": args.model,
            "expand_kv": args.expand_kv,
            "threads": torch.get_num_threads(),
            "svdvals_seconds": round(svd_s, 3),
            "gram_seconds": round(gram_s, 3),
            "speedup": round(svd_s / gram_s, 2),
            "layers_modes_with_different_rank": differ,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
