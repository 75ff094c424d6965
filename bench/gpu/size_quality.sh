# Issue 16: the size-quality curve of the real SmolLM2-135M on one H200 (bench/size_quality.py): the
# attention of every layer compressed to budgets 0.5 / 0.35 / 0.2 / 0.1 by per-matrix SVD, whitened SVD,
# data-free Tucker and data-aware (calibrated) Tucker, each without and with RECOVER (default 100)
# recovery steps; held-out perplexity on 32,768 tokens, WikidataQA on the first 1,000 test items, the
# factorised file's size. One process per method, all at once (the model is small; the GPU is shared).
# The SmolLM2 alias must be staged (a .m1 .whl call, then a .m2 .tc call). ~5 minutes.
# Results: $OUT/size_quality.tgz (one JSON per method, logs) -> bench/results/size_quality_h200/; merge
# and plot here with `python bench/size_quality.py --merge ... --out ... --plot ...`.
source bench/gpu/stage.sh
mkdir -p $S/sq
for m in svd svd_whitened tucker tucker_calibrated; do
  python3 bench/size_quality.py --device cuda --methods $m --recover ${RECOVER:-100} --budgets ${BUDGETS:-0.5,0.35,0.2,0.1} \
    --out $S/sq/$m.json > $S/logs/sq_$m.log 2>&1 &
done
wait
tail -n 2 $S/logs/sq_*.log
tar czf $OUT/size_quality.tgz -C $S sq logs/sq_svd.log logs/sq_svd_whitened.log logs/sq_tucker.log logs/sq_tucker_calibrated.log
