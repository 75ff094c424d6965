# WikidataQA searches, step 3 of 4: finish what step 2 left within its call: the GQA fine-tune resumes
# from its step-2600 checkpoint (GPU 1), the LASER store completes its last configurations and its
# test phase (GPU 0). Results: bench/results/search_wikidata_qa/ (laser_1gpu), gqa_finetune_3000/.
source bench/gpu/stage.sh
(CUDA_VISIBLE_DEVICES=1 timeout 230 python3 bench/gqa_smollm2.py --train-steps 3000 --train-batch-size 8 \
   --train-tokens 200000 --train-dir $S/ft --out $S/logs/gqa_smollm2_ft3000.json) > $S/logs/gqa_ft_resume.log 2>&1 &
(CUDA_VISIBLE_DEVICES=0 tl search smollm2-135m --task wikidata_qa --batch-size 1024 --device cuda --gpus 1 \
   --store $S/laser_1gpu --method laser --layers all --rhos 0.5,0.1,0.01 --matrix ffn_in --time-budget 170) > $S/logs/laser_b.log 2>&1 &
wait
grep -v "^val \|^test " $S/logs/laser_b.log | tail -n 20; tail -n 30 $S/logs/gqa_ft_resume.log
tar czf $OUT/searches_3_finish_laser_finetune.tgz -C $S logs laser_1gpu
