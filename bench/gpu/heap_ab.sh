# Issue 15: the heap frozen while an evaluation runs (tensorllm/base/heap.py), one H200. Needs SmolLM2
# staged (calls carrying .m1; .m2 .tc; .m3 with this script). 1. full WikidataQA at batch 2048, 8 runs
# with the heap frozen alternating with 8 on an unfrozen heap, in one process, each with its
# garbage-collector pauses (bench/eval_wikidata.py --plain-heap); 2. the racing Tucker 90-configuration
# search once more, fresh store, timed, and its store's time per phase (bench/search_phases.py).
# PAIRS=N: N pairs instead of 8; RACE=0: step 1 alone. ~2.5 minutes. Results: $OUT/heap_ab.tgz -> bench/results/first_token_loss_h200/heap/.
source bench/gpu/stage.sh
sizes=$(python3 -c "print(','.join(['2048'] * ${PAIRS:-8}))")
timeout 200 python3 bench/eval_wikidata.py --device cuda --batch-size $sizes \
  --sequential 5 --no-decode --plain-heap --json $S/logs/heap_ab.json > $S/logs/heap_ab.log 2>&1
grep -E "^batch" $S/logs/heap_ab.log
if [ "${RACE:-1}" = 0 ]; then cd $S && tar czf $OUT/heap_ab.tgz logs/heap_ab.json logs/heap_ab.log; exit 0; fi
R=$S/racing && mkdir -p $R && rm -rf $R/tucker_race_frozen_heap
timed tucker_race_frozen_heap tl search smollm2-135m --task wikidata_qa --batch-size 1024 --device cuda \
  --store $R/tucker_race_frozen_heap --time-budget 170 --method tucker --layers all --ranks "288,48,4;64,32,1;auto" --threads 8
python3 bench/search_phases.py $R/tucker_race_frozen_heap --json $S/logs/tucker_race_frozen_heap_phases.json
grep -E "winner \(val\)" $S/logs/tucker_race_frozen_heap.log | tail -1
cd $S && tar czf $OUT/heap_ab.tgz logs/heap_ab.json logs/heap_ab.log logs/tucker_race_frozen_heap.log \
  logs/tucker_race_frozen_heap_phases.json racing/tucker_race_frozen_heap/report.json racing/tucker_race_frozen_heap/report.md
