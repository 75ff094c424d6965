# Decode speed of a 7B-shaped model before/after MHA -> GQA in the host-sync-free loop, with SDPA's own
# grouped heads (enable_gqa=True, with the static cache's mask; now the default decode attention;
# bench/attn_decode_micro.py: 0.108 ms vs 0.139 ms packed per 7B layer on an H200). Model-free.
# ~2 min. Results: bench/results/decode_7b_loop/ (gqa_decode_loop_gqa*.json; 2026-11-30, 3rd session).
source bench/gpu/stage.sh
timeout 170 python3 bench/gqa_decode.py --parallel --driver loop --paths gqa,static --child-timeout 165 \
  --out $S/logs/gqa_decode_loop_gqa.json > $S/logs/decode_loop_gqa.log 2>&1
tail -n 40 $S/logs/decode_loop_gqa.log | grep -v '^\s*"\(tokens_per_s\|steps_timed\)'
cp $S/logs/gqa_decode_loop_gqa*.json $OUT/
