# Call E (as run right after call D, warm machine): the loop driver with flex_attention added.
# Under the loop, transformers 5.17's flex block-mask creation (a warnings.warn) breaks the full
# graph, so both flex rows are errors; packed and static repeat call D's numbers.
source bench/gpu/env.sh; timeout 290 python3 bench/gqa_decode.py --parallel --driver loop --paths packed,flex,static --child-timeout 280 --out $S/logs/gqa_decode_loop_flex.json > $S/logs/decode_loop_flex.log 2>&1; tail -n 60 $S/logs/decode_loop_flex.log | grep -v "^\s*\"\(tokens_per_s\|prefill_seconds\|steps_timed\)"; tar czf $OUT/next_e.tgz -C $S logs
