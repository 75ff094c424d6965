# Issue 16, item 3: where factorised attention pays (bench/factorised_speed.py). One layer's q/k/v/o
# projections dense vs factorised (decode batch 1 / 16, prefill 2048) and the whole model's prefill and
# greedy decode (eager generate, batch 1 / 16) with every layer's attention factorised at 2x-50x, for the
# LLaMA-2-7B and SmolLM2 shapes in bfloat16; the crossover rate; weights' resident and generate's peak
# bytes measured by the CUDA allocator. Random weights: carries nothing. ~4 min on one H200.
source bench/gpu/stage.sh
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 480 python3 bench/factorised_speed.py --out $OUT/factorised_speed.json 2>&1 | tail -60
