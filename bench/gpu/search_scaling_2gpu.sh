# Tucker search on 1 vs 2 GPUs (carry .m2 .tc, right after a call that carried .m1 .whl, e.g.
# decode_generate.sh): issue 5's scaling bench on both GPUs (untimed warm-up on
# both, then 1 and 2 processes into fresh stores, every result compared; configurations now go to
# whichever rank is free), ~8 min. (`tensorllm eval --device-map balanced` vs one GPU was measured
# identical on 2026-11-30; not repeated here, to leave the call to the scaling.)
# Results: bench/results/search_scaling_2gpu/ (2026-11-30, 3rd session).
source bench/gpu/stage.sh
timeout 575 python3 bench/search_scaling.py --root $S/scaling --gpus 1,2 --out $S/logs/scaling.json -- \
  smollm2-135m --task wikidata_qa --method tucker --layers all --ranks "288,48,4;64,32,1;auto" \
  --batch-size 1024 --device cuda --exhaustive > $S/logs/scaling.log 2>&1
grep -v "^\[rank\|^val \|^test " $S/logs/scaling.log | tail -n 50
tar czf $OUT/search_scaling_2gpu.tgz -C $S logs scaling
