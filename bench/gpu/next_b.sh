# Call B, right after A (carry .m2 .tc): issue 5's scaling bench on both GPUs (untimed warm-up on
# both, then 1 and 2 processes into fresh stores, every result compared; configurations now go to
# whichever rank is free), then `tensorllm eval` spread over both GPUs vs one GPU. ~9 min.
source bench/gpu/stage.sh
timeout 500 python3 bench/search_scaling.py --root $S/scaling --gpus 1,2 --out $S/logs/scaling.json -- \
  smollm2-135m --task wikidata_qa --method tucker --layers all --ranks "288,48,4;64,32,1;auto" \
  --batch-size 1024 --device cuda > $S/logs/scaling.log 2>&1
grep -v "^\[rank\|^val \|^test " $S/logs/scaling.log | tail -n 50
tar czf $OUT/next_b_scaling.tgz -C $S logs scaling  # kept even if the eval below runs out of time
for how in "--device cuda" "--device-map balanced"; do
  name=$(echo $how | tr -dc 'a-z'); tl eval smollm2-135m --task wikidata_qa --split val --batch-size 1024 $how \
    --json $S/logs/eval_$name.json
done
python3 - <<PY
import json
a, b = ([json.load(open(f"$S/logs/eval_{n}.json"))["results"][0] for n in ("devicecuda", "devicemapbalanced")])
print("one GPU", a["accuracy"], a["loss"], "| spread", b["accuracy"], b["loss"], "| same:", (a["accuracy"], a["loss"]) == (b["accuracy"], b["loss"]))
PY
tar czf $OUT/next_b.tgz -C $S logs
