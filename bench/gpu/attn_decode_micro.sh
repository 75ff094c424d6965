# Call after E (warm machine): one 7B layer's decode attention alone, per kernel (bench/attn_decode_micro.py).
source bench/gpu/env.sh; timeout 150 python3 bench/attn_decode_micro.py --out $OUT/attn_micro.json 2>&1 | grep -v "^ \|^{\|^}" | tail -20
