# Call C, right after B (no carry): issue 4's fine-tune at lr 3e-4 (GPU 1; checkpoints in $S/ft2,
# so running this script again resumes it) and at lr 6e-4 (GPU 0, $S/ft3); each ~10 min of 3,000 steps.
source bench/gpu/stage.sh
ft() {  # gpu, name, then options
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout 560 python3 bench/gqa_smollm2.py --train-batch-size 8 --train-tokens 200000 \
    --train-dir $S/$name --out $S/logs/$name.json "$@" > $S/logs/$name.log 2>&1
}
ft 1 ft2 --train-steps 3000 --lr 3e-4 &
ft 0 ft3 --train-steps 3000 --lr 6e-4 &
wait
tail -n 4 $S/logs/ft2.log $S/logs/ft3.log
tar czf $OUT/next_c.tgz -C $S logs
