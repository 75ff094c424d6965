# Decode speed of a 7B-shaped model before/after MHA -> GQA in a loop that never waits for the host,
# tensorllm's packed kernel (carry .whl as a session's first call): `--driver loop`: one compiled step,
# CUDA graphs, tokens stay on the GPU (bench/gqa_decode.py); decode_generate.sh's static paths run
# under transformers' generate, which reads every token back before the next step. Original on
# GPU 0, converted on GPU 1, at once; 1 + 2 compiles. ~3-4 min.
# Results: bench/results/decode_7b_loop/ (gqa_decode_loop.json; 2026-11-30, 3rd session).
source bench/gpu/stage.sh
timeout 420 python3 bench/gqa_decode.py --parallel --driver loop --paths packed,static --child-timeout 400 \
  --out $S/logs/gqa_decode_loop.json > $S/logs/decode_loop.log 2>&1
tail -n 45 $S/logs/decode_loop.log
tar czf $OUT/decode_loop_packed.tgz -C $S logs
