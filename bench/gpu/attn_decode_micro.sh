# One LLaMA-2-7B layer's decode attention alone, per kernel (bench/attn_decode_micro.py); model-free.
# Results: bench/results/attn_decode_micro/ (2026-11-30, 3rd session).
source bench/gpu/stage.sh; timeout 150 python3 bench/attn_decode_micro.py --out $OUT/attn_micro.json 2>&1 | grep -v "^ \|^{\|^}" | tail -20
