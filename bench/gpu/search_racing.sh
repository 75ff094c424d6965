# Racing vs exhaustive searches, one H200 (issue 15). Carry .m2 .tc, right after a call that carried
# .m1 .whl (e.g. `bash bench/gpu/stage.sh`); ~8.5 min (426 s on 2026-12-01 with a 110 s race):
# 1. three exhaustive grids at once on the one GPU, with per-item results for the replay: the Tucker
#    and LASER 90-configuration WikidataQA grids of BENCHMARKS.md (bf16, batch 1024), and the CPU
#    acceptance grid (30 layers x 288,48,4, --limit-val 400 --limit-test 300, float32) followed by its
#    race (--race-first 40), so the CPU race's winner can be checked against the exhaustive one;
# 2. the racing Tucker 90-configuration search alone, fresh store, timed (target: <= 60 s incl. test);
# 3. bench/search_replay.py on the complete grids (same winner? item evaluations vs the full grid);
# 4. full WikidataQA at batch 2048, twice: the second finds the texts tokenised (target: <= 2 s; 7.3 s
#    on 2026-11-30).
# Stores, logs and JSON come back in $OUT/search_racing.tgz.
# RACE_ONLY=1: steps 2 and 4 alone (the timed racing search, the full-WikidataQA eval), ~4 minutes.
source bench/gpu/stage.sh
R=$S/racing && mkdir -p $R
run() {  # run NAME BUDGET ARGS...: a search into $R/NAME, timed into $S/logs/NAME.log
  local name=$1 budget=$2; shift 2
  timed $name tl search smollm2-135m --task wikidata_qa --batch-size 1024 --device cuda --store $R/$name \
     --time-budget $budget "$@"
}
TUCKER=(--method tucker --layers all --ranks "288,48,4;64,32,1;auto")
CPU30=(--method tucker --layers all --ranks 288,48,4 --limit-val 400 --limit-test 300 --dtype float32)
if [ "${RACE_ONLY:-0}" != 1 ]; then
run tucker_ex 270 "${TUCKER[@]}" --exhaustive --threads 5 &
run laser_ex 270 --method laser --layers all --rhos 0.5,0.1,0.01 --matrix up --exhaustive --threads 5 &
(run cpu30_ex_f32 130 "${CPU30[@]}" --exhaustive --threads 4 && \
 run cpu30_race_f32 130 "${CPU30[@]}" --race-first 40 --threads 4) &
wait
fi
run tucker_race 170 "${TUCKER[@]}" --threads 8
[ "${RACE_ONLY:-0}" = 1 ] || python3 bench/search_replay.py $R/tucker_ex $R/laser_ex --race-alpha 0.001,0.01,0.05 --race-first 0,474 \
  --allow-partial --out $S/logs/replay_90.json 2> $S/logs/replay_90.log
[ "${RACE_ONLY:-0}" = 1 ] || python3 bench/search_replay.py $R/cpu30_ex_f32 --race-first 40 --allow-partial \
  --out $S/logs/replay_cpu30.json 2> $S/logs/replay_cpu30.log
timeout 60 python3 bench/eval_wikidata.py --device cuda --batch-size 2048,2048 --sequential 20 \
  --json $S/logs/eval_wikidata.json > $S/logs/eval_wikidata.log 2>&1
cat $S/logs/replay_90.log $S/logs/replay_cpu30.log 2>/dev/null; grep -h "^WALL" $S/logs/*.log
python3 - <<'EOF'
import json, os
for name in ("tucker_ex", "laser_ex", "cpu30_ex_f32", "cpu30_race_f32", "tucker_race"):
    try:
        r = json.load(open(os.path.join(os.environ["S"], "racing", name, "report.json")))
    except OSError:
        print(name, "no report")
        continue
    w = r["roles"].get("winner") or {}
    print(name, r["status"], w.get("describe"), (w.get("test") or {}).get("accuracy"),
          (r.get("race") or {}).get("item_evaluations"), *r["statistics"]["verdicts"][:1], sep=" | ")
EOF
tail -n 3 $S/logs/eval_wikidata.log
tar czf $OUT/search_racing.tgz -C $S logs racing
