# Issue 15: who freezes the garbage collector's heap on the GPU machine (bench/gc_probe.py: the freeze
# count after each import, after CUDA starts and a CUDA-graph capture; a full collection outside and
# inside tensorllm's frozen_heap). Needs nothing staged; any carry is staged as usual. ~20 s.
# Results: $OUT/gc_probe.json -> bench/results/first_token_loss_h200/heap/.
source bench/gpu/stage.sh
python3 bench/gc_probe.py --device cuda --json $OUT/gc_probe.json 2>&1 | grep -v Warning
lscpu | grep -E "^Model name" | tee $OUT/host.txt; python3 -V | tee -a $OUT/host.txt
