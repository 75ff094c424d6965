# Call 3, right after call 2 (no carry; the model and stores are in $S): issue 5's 2-GPU search into a
# fresh store, then LASER and the hybrid on both GPUs, then the search on the multi-head expansion.
source bench/gpu/env.sh
run() {  # name, then the search flags
  local name=$1; shift; local t0=$(stamp)
  tl search smollm2-135m --task wikidata_qa --batch-size 1024 --device cuda --gpus 2 --store $S/$name "$@"
  echo "WALL $name $(python3 -c "print(round($(stamp) - $t0, 1))") s"
}
{
  run tucker_2gpu --method tucker --layers all --ranks "288,48,4;64,32,1;auto" --time-budget 250
  run laser_2gpu --method laser --layers all --rhos 0.5,0.1,0.01 --matrix ffn_in --time-budget 200
  run hybrid_2gpu --method hybrid --from $S/tucker_2gpu --from $S/laser_2gpu --top-k 3 --time-budget 60
} > $S/logs/search_2gpu.log 2>&1
grep -v "^\[rank\|^val \|^test " $S/logs/search_2gpu.log | tail -n 60
tar czf $OUT/call3.tgz -C $S logs tucker_2gpu laser_2gpu hybrid_2gpu
