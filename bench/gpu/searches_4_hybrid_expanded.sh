# WikidataQA searches, step 4 of 4: the hybrid again, now from the complete LASER store (step 2's
# hybrid read it at 82 of 90); then the Tucker search on the multi-head expansion (9 K/V heads), one
# rank setting, both GPUs. Results: bench/results/search_wikidata_qa/ (hybrid_full, tucker_expanded).
source bench/gpu/stage.sh
run() {  # name, then the search flags
  local name=$1; shift; local t0=$(stamp)
  tl search smollm2-135m --task wikidata_qa --batch-size 1024 --device cuda --gpus 2 --store $S/$name "$@"
  echo "WALL $name $(python3 -c "print(round($(stamp) - $t0, 1))") s"
}
{
  run hybrid_full --method hybrid --from $S/tucker_2gpu --from $S/laser_1gpu --top-k 3 --time-budget 100
  run tucker_expanded --method tucker --expand-kv --layers all --ranks "288,48,4" --time-budget 110
} > $S/logs/hybrid_expanded.log 2>&1
grep -v "^\[rank\|^val \|^test \|Loading weights" $S/logs/hybrid_expanded.log | tail -n 40
tar czf $OUT/searches_4_hybrid_expanded.tgz -C $S logs hybrid_full tucker_expanded
