# WikidataQA searches, step 2 of 4, right after searches_1_tucker_eval_finetune.sh (no carry; model,
# stores and fine-tune checkpoints are in $S).
# A (parallel): GPU 1 resumes the GQA fine-tune from its checkpoint; GPU 0 finishes the 1-GPU Tucker
# store if step 1 left it partial, then the LASER search on one GPU. B: the 2-GPU Tucker search into a
# fresh store (issue 5), then the hybrid of the Tucker and LASER winners on both GPUs.
# Results: bench/results/search_wikidata_qa/ (tucker_2gpu; $S/hybrid_2gpu, kept as hybrid_2gpu_partial_laser),
# gqa_finetune_3000/.
source bench/gpu/stage.sh
run() {  # name, gpus, then the search flags
  local name=$1 g=$2; shift 2; local t0=$(stamp)
  tl search smollm2-135m --task wikidata_qa --batch-size 1024 --device cuda --gpus $g --store $S/$name "$@"
  echo "WALL $name $(python3 -c "print(round($(stamp) - $t0, 1))") s"
}
T="--method tucker --layers all --ranks 288,48,4;64,32,1;auto"
(CUDA_VISIBLE_DEVICES=1 timeout 300 python3 bench/gqa_smollm2.py --train-steps 3000 --train-batch-size 8 \
   --train-tokens 200000 --train-dir $S/ft --out $S/logs/gqa_smollm2_ft3000.json) > $S/logs/gqa_ft_resume.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=0
  run tucker_1gpu 1 $T --time-budget 200
  run laser_1gpu 1 --method laser --layers all --rhos 0.5,0.1,0.01 --matrix ffn_in --time-budget 200
) > $S/logs/search_a.log 2>&1 &
wait
{
  run tucker_2gpu 2 $T --time-budget 200
  run hybrid_2gpu 2 --method hybrid --from $S/tucker_2gpu --from $S/laser_1gpu --top-k 3 --time-budget 60
} > $S/logs/search_2gpu.log 2>&1
grep -v "^\[rank\|^val \|^test " $S/logs/search_a.log $S/logs/search_2gpu.log | tail -n 70; tail -n 12 $S/logs/gqa_ft_resume.log
tar czf $OUT/searches_2_laser_tucker_2gpu_hybrid.tgz -C $S logs tucker_1gpu laser_1gpu tucker_2gpu hybrid_2gpu
