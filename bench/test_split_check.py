"""CPU check of a search winner on the test split (used when the GPU search could not finish).

    python bench/test_split_check.py --layer 16 --ranks 288,48,4 --limit 3000 --json bench/results/test_check.json
"""

import argparse
import json
import time

import tensorllm
from tensorllm.eval import evaluate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--ranks", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    loaded = tensorllm.load_model("smollm2-135m", device="cpu")
    rows = {}
    t0 = time.time()
    rows["baseline"] = evaluate(loaded.model, loaded.tokenizer, "wikidata_qa", split="test", limit=a.limit,
                                progress=False).to_dict()
    print("baseline", rows["baseline"]["accuracy"], rows["baseline"]["loss"], flush=True)
    ranks = [int(x) for x in a.ranks.split(",")]
    tensorllm.compress(loaded, {"device": "cpu", "steps": [{"method": "tucker", "layers": [a.layer], "ranks": ranks}]},
                       progress=False)
    rows["tucker"] = evaluate(loaded.model, loaded.tokenizer, "wikidata_qa", split="test", limit=a.limit,
                              progress=False).to_dict()
    print(f"tucker L{a.layer} {ranks}", rows["tucker"]["accuracy"], rows["tucker"]["loss"], flush=True)
    out = {"layer": a.layer, "ranks": ranks, "limit": a.limit, "device": "cpu float32", "seconds": time.time() - t0,
           "baseline": {k: rows["baseline"][k] for k in ("n", "accuracy", "loss", "answer_mode")},
           "tucker": {k: rows["tucker"][k] for k in ("n", "accuracy", "loss", "answer_mode")}}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
