# Call F: SDPA's own grouped heads (enable_gqa=True, with the static cache's mask) as the decode
# attention (bench/attn_decode_micro.py: 0.108 ms vs 0.139 ms packed per 7B layer on an H200), in
# the host-sync-free loop. ~2 min.
source bench/gpu/env.sh
timeout 170 python3 bench/gqa_decode.py --parallel --driver loop --paths gqa,static --child-timeout 165 \
  --out $S/logs/gqa_decode_loop_gqa.json > $S/logs/decode_loop_gqa.log 2>&1
tail -n 40 $S/logs/decode_loop_gqa.log | grep -v '^\s*"\(tokens_per_s\|steps_timed\)'
cp $S/logs/gqa_decode_loop_gqa*.json $OUT/
