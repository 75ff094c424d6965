# Call D (carry .whl): issue 4's decode speed with a loop that never waits for the host
# (`--driver loop`: one compiled step, CUDA graphs, tokens stay on the GPU; bench/gqa_decode.py).
# Call A's static paths all ran under transformers' generate, which reads every token back before the
# next step. Original on GPU 0, converted on GPU 1, at once; 1 + 2 compiles. ~3-4 min.
source bench/gpu/stage.sh
timeout 420 python3 bench/gqa_decode.py --parallel --driver loop --paths packed,static --child-timeout 400 \
  --out $S/logs/gqa_decode_loop.json > $S/logs/decode_loop.log 2>&1
tail -n 45 $S/logs/decode_loop.log
tar czf $OUT/next_d.tgz -C $S logs
