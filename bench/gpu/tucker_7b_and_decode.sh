# Model-free benchmarks, both GPUs at once; a session's first call (carry .m1 .whl: the wheels and the
# first half of the GGUF are staged for the next call).
# GPU 0: Tucker of 32 LLaMA-2-7B-shaped layers (library start, then full-HOSVD start), then TensorLy's
# partial_tucker on one layer (CPU numpy, 16 threads; and its GPU attempt). GPU 1: decode speed of a
# 7B-shaped model before/after MHA -> GQA (32 -> 8 K/V heads), default and static+compiled paths.
# Results: bench/results/tucker_7b_h200/, bench/results/decode_7b_sdpa/ (2026-11-30).
source bench/gpu/stage.sh
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.device_count())"
(
  export CUDA_VISIBLE_DEVICES=0
  for start in library full-hosvd; do
    python3 bench/tucker_7b.py --device cuda --layers 32 --compute-dtype float32 --start $start --json $S/logs/tucker_7b_$start.json
  done
  OMP_NUM_THREADS=16 timeout 300 python3 bench/tucker_7b.py --device cuda --layers 1 --compute-dtype float32 --tensorly --tensorly-n-iter-max 3 --json $S/logs/tucker_7b_tensorly.json
) > $S/logs/tucker.log 2>&1 &
(CUDA_VISIBLE_DEVICES=1 timeout 520 python3 bench/gqa_decode.py --out $S/logs/gqa_decode.json) > $S/logs/decode.log 2>&1 &
wait
tail -n 30 $S/logs/tucker.log; tail -n 40 $S/logs/decode.log
tar czf $OUT/tucker_7b_and_decode.tgz -C $S logs
