# Call B, right after A (carry .m2 .tc): issue 5's scaling bench on both GPUs (1 then 2 processes,
# fresh stores, every result compared), then `tensorllm eval` with the model spread over both GPUs
# (accelerate, --device-map balanced) against one GPU: the numbers must be the same. ~8.5 min.
source bench/gpu/stage.sh
timeout 470 python3 bench/search_scaling.py --root $S/scaling --gpus 1,2 --out $S/logs/scaling.json -- \
  smollm2-135m --task wikidata_qa --method tucker --layers all --ranks "288,48,4;64,32,1;auto" \
  --batch-size 1024 --device cuda > $S/logs/scaling.log 2>&1
tail -n 40 $S/logs/scaling.log
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
