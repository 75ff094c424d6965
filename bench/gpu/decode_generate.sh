# Next session, call A (carry .m1 .whl): issue 4's decode speed, the original on GPU 0 and the
# converted model on GPU 1 at once, each in its own process; paths: default, tensorllm's packed
# and split decode attention, transformers' flex_attention and SDPA (static cache + torch.compile).
# ~5-6 min (up to four compiles of a 7B-shaped model per process).
source bench/gpu/stage.sh
timeout 580 python3 bench/gqa_decode.py --parallel --child-timeout 540 --out $S/logs/gqa_decode.json > $S/logs/decode.log 2>&1
tail -n 60 $S/logs/decode.log
tar czf $OUT/next_a.tgz -C $S logs
