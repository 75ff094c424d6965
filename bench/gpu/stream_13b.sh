# Streamed compression of LLaMA-shaped random bf16 checkpoints written as 5 GB shards on this machine's
# disk (issue 17, item 5), one GPU, nothing to carry. Call 1: the 13B shape (26 GB), Tucker and LASER on
# all 40 layers: wall time split into read / compute / write / copy, peak CPU RSS, peak GPU memory.
# Call 2: the 1B and 7B shapes, Tucker, for the growth plot; the 1B Tucker also through the in-memory
# path, every output tensor and the logits on a prompt compared. Disk: at most one input + one output
# (52 GB for 13B) at a time. Results: bench/results/stream_13b_h200/ (the tarball's logs/).
source bench/gpu/stage.sh
python3 -c "import torch, transformers, safetensors; print(torch.__version__, transformers.__version__, safetensors.__version__)"
df -h $S | tail -1; free -g | head -2
export CUDA_VISIBLE_DEVICES=0
rm -rf $S/sb
timeout 290 python3 bench/stream_bench.py --shapes 13b --methods tucker,laser --device cuda --dir $S/sb \
  --timeout 140 --out $S/logs/stream_13b.json > $S/logs/stream_13b.log 2>&1
echo "13b exit $?"; tail -n 4 $S/logs/stream_13b.log
timeout 160 python3 bench/stream_bench.py --shapes 1b,7b --methods tucker --device cuda --dir $S/sb --compare \
  --timeout 90 --out $S/logs/stream_1b_7b.json > $S/logs/stream_1b_7b.log 2>&1
echo "1b,7b exit $?"; tail -n 6 $S/logs/stream_1b_7b.log
python3 bench/plot_stream_growth.py $S/logs/stream_1b_7b.json $S/logs/stream_13b.json --out $S/logs/stream_growth.png
rm -rf $S/sb
tar czf $OUT/stream_13b.tgz -C $S logs
