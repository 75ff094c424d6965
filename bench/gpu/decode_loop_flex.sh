# The host-sync-free decode loop with flex_attention added (run right after decode_loop_packed.sh,
# warm machine).
# Under the loop, transformers 5.17's flex block-mask creation (a warnings.warn) breaks the full
# graph, so both flex rows are errors; packed and static repeat decode_loop_packed.sh's numbers.
# Results: bench/results/decode_7b_loop/ (gqa_decode_loop_flex.json; 2026-11-30, 3rd session).
source bench/gpu/stage.sh; timeout 290 python3 bench/gqa_decode.py --parallel --driver loop --paths packed,flex,static --child-timeout 280 --out $S/logs/gqa_decode_loop_flex.json > $S/logs/decode_loop_flex.log 2>&1; tail -n 60 $S/logs/decode_loop_flex.log | grep -v "^\s*\"\(tokens_per_s\|prefill_seconds\|steps_timed\)"; tar czf $OUT/decode_loop_flex.tgz -C $S logs
