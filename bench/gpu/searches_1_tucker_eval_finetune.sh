# WikidataQA searches, step 1 of 4 (carry .m2 .tc, right after a call that carried .m1 .whl, e.g.
# tucker_7b_and_decode.sh): the real SmolLM2 (GGUF -> dequantised alias cache) and data are staged.
# GPU 0: the 90-config Tucker search on one GPU into a fresh store (issue 3, and the 1-GPU side of
# issue 5), then the full-WikidataQA eval timing. GPU 1: MHA -> GQA on SmolLM2 with the recovery
# fine-tune (3000 steps, own text; checkpoints in $S/ft so a later call resumes).
# Results: bench/results/search_wikidata_qa/ (tucker_1gpu), eval_wikidata_h200/, gqa_finetune_3000/.
source bench/gpu/stage.sh
(
  export CUDA_VISIBLE_DEVICES=0
  t0=$(stamp)
  tl search smollm2-135m --task wikidata_qa --method tucker --layers all --ranks "288,48,4;64,32,1;auto" \
     --store $S/tucker_1gpu --batch-size 1024 --device cuda --gpus 1 --time-budget 380
  echo "WALL tucker_1gpu $(python3 -c "print(round($(stamp) - $t0, 1))") s"
  timeout 150 python3 bench/eval_wikidata.py --device cuda --batch-size 512,1024,2048 --sequential 100 --json $S/logs/eval_wikidata.json
) > $S/logs/search_1gpu.log 2>&1 &
(CUDA_VISIBLE_DEVICES=1 timeout 545 python3 bench/gqa_smollm2.py --train-steps 3000 --train-batch-size 8 \
   --train-tokens 200000 --train-dir $S/ft --out $S/logs/gqa_smollm2_ft3000.json) > $S/logs/gqa_ft.log 2>&1 &
wait
grep -v "^val \|^test " $S/logs/search_1gpu.log | tail -n 40; tail -n 25 $S/logs/gqa_ft.log
tar czf $OUT/searches_1_tucker_eval_finetune.tgz -C $S logs tucker_1gpu
