# The streamed MHA -> GQA conversion of a LLaMA-2-7B-shaped random bf16 checkpoint (issue 17, items 2
# and 5): 32 -> 8 K/V heads on 128 x 2048 calibration tokens, one decoder layer at a time, hidden states
# carried on the GPU; then the in-memory conversion of the same checkpoint, every output tensor and the
# logits on a prompt compared. One GPU, nothing to carry; about 6 minutes. Targets: peak GPU <= 8 GB,
# time no worse than the in-memory conversion. Results: bench/results/stream_gqa_7b_h200/.
# STREAM_ONLY=1: the streamed conversion alone (no in-memory run, no comparison), for a short call.
source bench/gpu/stage.sh
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
export CUDA_VISIBLE_DEVICES=0
rm -rf $S/sb
if [ "${STREAM_ONLY:-0}" = 1 ]; then compare=(); limits=(240 190); else compare=(--compare); limits=(540 250); fi
timeout ${limits[0]} python3 bench/stream_bench.py --shapes 7b --methods gqa --device cuda --dir $S/sb \
  "${compare[@]}" --timeout ${limits[1]} --out $S/logs/stream_gqa_7b.json > $S/logs/stream_gqa_7b.log 2>&1
echo "exit $?"; tail -n 8 $S/logs/stream_gqa_7b.log
rm -rf $S/sb
tar czf $OUT/stream_gqa_7b.tgz -C $S logs/stream_gqa_7b.json logs/stream_gqa_7b.log
