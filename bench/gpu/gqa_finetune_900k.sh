# GQA recovery fine-tune on 900k distinct tokens (no carry; after a call that staged the model, e.g.
# search_scaling_2gpu.sh): issue 4's recovery fine-tune with more distinct text. The
# 2026-11-30 runs fitted their 199,680 tokens (~100 passes) far better than held-out text; the
# default text is now 966k tokens. Both GPUs, one process each, 2,200 steps of 8 x 1,024 (~8 min;
# 2,400 did not fit a call), cosine, held-out curve, 900k fine-tune tokens (~20 passes):
# GPU 0 trains Q, O and the shared K/V at peak lr 1e-3 (as the best run so far), GPU 1 every weight
# (--train-scope all) at 3e-4. Checkpoints in $S/ft6, $S/ft7: running this again resumes them.
# Results: bench/results/gqa_finetune_900k/ (2026-11-30, 3rd session).
source bench/gpu/stage.sh
ft() {  # gpu, name, then options
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout 575 python3 bench/gqa_smollm2.py --train-batch-size 8 --train-steps 2200 \
    --lr-schedule cosine --train-tokens 900000 --train-dir $S/$name --out $S/logs/$name.json "$@" > $S/logs/$name.log 2>&1
}
ft 0 ft6 --lr 1e-3 &
ft 1 ft7 --lr 3e-4 --train-scope all &
wait
grep -h "monitor\|kv1_align_finetune" $S/logs/ft6.log $S/logs/ft7.log | tail -n 60
tar czf $OUT/gqa_finetune_900k.tgz -C $S logs
