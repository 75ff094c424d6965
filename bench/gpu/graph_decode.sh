# Issue 15: greedy decoding replayed from CUDA graphs (eval/static_decode.py `graph_greedy`), one H200.
# Step 1 needs nothing staged: the GPU tests of tests/eval/test_static_decode.py on tiny models (tokens
# equal to the plain loop's on 10 families; replays after in-place edits; a moved parameter drops the
# captures). GRAPH_STEPS=1 stops there. Steps 2-3 need SmolLM2 staged (calls carrying .m1; .m2 .tc;
# .m3 .whl): 2. full WikidataQA at batch 2048, four times (one cold, three warm), with the plain / static / graph decode timed and
# compared, with a cProfile of one more run (bench/eval_wikidata.py), and one batch's GPU time by kernel
# (bench/profile_decode.py: transformers' own attention and rotary vs eval/fast_paths' packed and gqa
# kernels), with TUCKER_STEP=1 one Tucker step's (bench/profile_tucker_step.py); 3. the racing Tucker 90-configuration search, fresh store, timed
# (target <= 60 s incl. test), as in search_racing.sh, and its store's time per phase (bench/search_phases.py).
# ~4 minutes.
# Results: $OUT/graph_decode.tgz (logs, JSON, the search's report) -> bench/results/graph_decode_h200/.
source bench/gpu/stage.sh
# pytest: from .whl (stage.sh installs it into $S/site), so the first call carries .whl
[ "${SKIP_TESTS:-0}" = 1 ] && touch $S/logs/gpu_tests.log  # SKIP_TESTS=1: straight to step 2
[ "${SKIP_TESTS:-0}" = 1 ] || TENSORLLM_TESTS_OFFLINE=1 timed gpu_tests python3 -m pytest -q -p no:cacheprovider tests/eval/test_static_decode.py \
  tests/eval/test_fast_paths.py tests/eval/test_first_token_loss.py -k "gpu or capture" -rs
tail -n 5 $S/logs/gpu_tests.log
[ "${GRAPH_STEPS:-3}" = 1 ] && exit 0
timeout 150 python3 bench/eval_wikidata.py --device cuda --batch-size 2048,2048,2048,2048 --sequential 20 \
  --json $S/logs/eval_wikidata_graphs.json --profile $S/logs/eval_wikidata_profile.txt \
  > $S/logs/eval_wikidata_graphs.log 2>&1
grep -E "^(batch|decode)" $S/logs/eval_wikidata_graphs.log
timeout 240 python3 bench/profile_decode.py --device cuda --rows ${ROWS:-2048,256} --modes ${MODES:-stock,gqa} --out $S/logs/profile_decode \
  > $S/logs/profile_decode.log 2>&1; grep -E "^[0-9]+ (stock|gqa|packed)" $S/logs/profile_decode.log
touch $S/logs/profile_tucker.log
[ "${TUCKER_STEP:-0}" = 1 ] && timeout 60 python3 bench/profile_tucker_step.py --device cuda --layer 5 \
  --out $S/logs/profile_decode > $S/logs/profile_tucker.log 2>&1 && grep "^{" $S/logs/profile_tucker.log
R=$S/racing && mkdir -p $R
for run in 1 ${RACE_AGAIN:+2}; do  # RACE_AGAIN=1: the same search once more, fresh store (run-to-run noise)
  store=tucker_race_graphs$([ $run = 2 ] && echo _again)
  rm -rf $R/$store
  timed $store tl search smollm2-135m --task wikidata_qa --batch-size 1024 --device cuda \
    --store $R/$store --time-budget 170 --method tucker --layers all --ranks "288,48,4;64,32,1;auto" --threads 8
  STORE=$R/$store python3 - <<'PY'
import json, os
r = json.load(open(os.path.join(os.environ["STORE"], "report.json")))
w = r["roles"]["winner"]
print(r["status"], r["run"]["seconds"], w["describe"], w["val"]["accuracy"], w["test"]["accuracy"],
      r["race"]["item_evaluations"], r["run"]["eval_seconds_in_store"], sep=" | ")
PY
  python3 bench/search_phases.py $R/$store --json $S/logs/${store}_phases.json
done
cd $S && tar czf $OUT/graph_decode.tgz logs/gpu_tests.log logs/eval_wikidata_graphs.json logs/eval_wikidata_graphs.log \
  logs/eval_wikidata_profile.txt logs/profile_decode logs/profile_decode.log logs/profile_tucker.log logs/tucker_race_graphs*_phases.json logs/tucker_race_graphs*.log racing/tucker_race_graphs*
