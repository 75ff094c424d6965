# Issue 13, items 4 and 5 at length: the real SmolLM2-135M converted 3 -> 1 K/V head (aligned merge),
# then the gated recovery fine-tune under each l0_schedule (ceiling, lagrangian), equal steps, both at
# once on one H200; each report has held-out perplexity and WikidataQA (first 3,000 test items) before
# and after. The SmolLM2 alias must be staged (a .m1 .whl call, then a .m2 .tc call). ~6 minutes.
# Results: $OUT/gqa_l0_long.tgz (reports, recipes, logs; no weights) -> bench/results/gqa_l0_long_h200/.
source bench/gpu/stage.sh
STEPS=${STEPS:-800}
one() {  # one SCHEDULE
  timed l0_$1 tl gqa smollm2-135m --kv-heads 1 --train-steps $STEPS --train-batch-size 8 --seq-len 1024 \
     --train-tokens 900000 --lr 1e-3 --l0-schedule $1 --eval-task wikidata_qa --eval-split test \
     --eval-limit 3000 --decode-tokens 0 --device cuda --out $S/l0_$1 --overwrite
}
one ceiling &
one lagrangian &
wait
python3 - <<'PY'
import json, os
for s in ("ceiling", "lagrangian"):
    try:
        r = json.load(open(os.path.join(os.environ["S"], f"l0_{s}", "report.json")))
    except OSError:
        print(s, "no report")
        continue
    print(s, json.dumps({k: r.get(k) for k in ("before", "after")})[:900])
PY
mkdir -p $S/l0_keep && for s in ceiling lagrangian; do
  mkdir -p $S/l0_keep/$s && cp $S/l0_$s/*.json $S/l0_$s/*.yaml $S/l0_keep/$s/ 2>/dev/null; done
tar czf $OUT/gqa_l0_long.tgz -C $S logs/l0_ceiling.log logs/l0_lagrangian.log l0_keep
