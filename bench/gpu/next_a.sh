# Next session, call A (carry .m1 .whl): issue 4's decode speed, each model in its own process,
# on GPU 0, while GPU 1 is idle (no model yet). ~5 min (two compiles of a 7B-shaped model).
source bench/gpu/stage.sh
CUDA_VISIBLE_DEVICES=0 timeout 560 python3 bench/gqa_decode.py --out $S/logs/gqa_decode.json > $S/logs/decode.log 2>&1
tail -n 45 $S/logs/decode.log
tar czf $OUT/next_a.tgz -C $S logs
