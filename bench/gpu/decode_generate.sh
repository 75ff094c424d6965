# Decode speed of a 7B-shaped model before/after MHA -> GQA under transformers' generate (carry .m1 .whl
# as a session's first call; issue 4): the original on GPU 0 and the converted model on GPU 1 at
# once, each in its own process; paths: default, tensorllm's gqa and packed decode attention,
# transformers' flex_attention and SDPA (static cache + torch.compile; the 2026-11-30 run had no gqa
# path yet and timed a split-K kernel, removed since). ~5-6 min (up to four compiles of a 7B-shaped
# model per process).
# Results: bench/results/decode_7b_generate_2gpu/ (2026-11-30, 3rd session).
source bench/gpu/stage.sh
timeout 580 python3 bench/gqa_decode.py --parallel --child-timeout 540 --out $S/logs/gqa_decode.json > $S/logs/decode.log 2>&1
tail -n 60 $S/logs/decode.log
tar czf $OUT/decode_generate.tgz -C $S logs
