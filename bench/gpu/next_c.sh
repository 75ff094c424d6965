# Call C, right after B (no carry): issue 4's recovery fine-tune, 2,400 steps (~8 min) with the cosine
# schedule and a held-out perplexity curve (25 points), peak lr 3e-4 on GPU 0 and 1e-3 on GPU 1, one
# process per GPU. Checkpoints in $S/ft4, $S/ft5: running this script again resumes them.
source bench/gpu/stage.sh
ft() {  # gpu, name, then options
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout 570 python3 bench/gqa_smollm2.py --train-batch-size 8 --train-tokens 200000 \
    --train-dir $S/$name --out $S/logs/$name.json "$@" > $S/logs/$name.log 2>&1
}
ft 0 ft4 --train-steps 2400 --lr 3e-4 --lr-schedule cosine &
ft 1 ft5 --train-steps 2400 --lr 1e-3 --lr-schedule cosine &
wait
grep -h "monitor\|finetune" $S/logs/ft4.log $S/logs/ft5.log | tail -n 60
tar czf $OUT/next_c.tgz -C $S logs
