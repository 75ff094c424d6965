"""epistemic_reasoning on SmolLM2-135M: the first-token decision (what `tensorllm eval` does) against
LASER's full-label rule (sum of the label's token log-probs), on the first N test items, one item and
one label at a time (float32, CPU). Usage: `python bench/epistemic_full_label.py N` (prints JSON)."""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tensorllm.eval import get_task, load_task, select
from tensorllm.models.aliases import alias_path

n = int(sys.argv[1])
path = alias_path("smollm2-135m")
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
items = select(load_task(get_task("epistemic_reasoning")).examples, "test", n)
labels = [tok(" " + w, add_special_tokens=False).input_ids for w in ("entailment", "non-entailment")]
rows = []
with torch.no_grad():
    for e in items:
        prompt = tok(e.prompt, add_special_tokens=False).input_ids
        sums, firsts = [], []
        for lab in labels:
            logp = torch.log_softmax(
                model(torch.tensor([prompt + lab])).logits[0, len(prompt) - 1 : -1].float(), -1
            )
            per = logp[torch.arange(len(lab)), torch.tensor(lab)]
            sums.append(per.sum().item())
            firsts.append(per[0].item())
        rows.append({"label": e.label, "first": int(firsts[1] > firsts[0]), "full": int(sums[1] > sums[0])})
acc = lambda k: 100.0 * sum(r[k] == r["label"] for r in rows) / len(rows)  # noqa: E731
print(
    json.dumps(
        {
            "n": len(rows),
            "first_token_acc": acc("first"),
            "full_label_acc": acc("full"),
            "decisions_differ": sum(r["first"] != r["full"] for r in rows),
            "predicted_non_entailment_first": sum(r["first"] for r in rows),
        }
    )
)
