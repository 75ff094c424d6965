# Call B, right after A (carry .m2 .tc): issue 5's scaling bench on both GPUs (1 then 2 processes,
# fresh stores, every result compared). ~7 min.
source bench/gpu/stage.sh
timeout 560 python3 bench/search_scaling.py --root $S/scaling --gpus 1,2 --out $S/logs/scaling.json -- \
  smollm2-135m --task wikidata_qa --method tucker --layers all --ranks "288,48,4;64,32,1;auto" \
  --batch-size 1024 --device cuda > $S/logs/scaling.log 2>&1
tail -n 40 $S/logs/scaling.log
tar czf $OUT/next_b.tgz -C $S logs scaling
