#!/usr/bin/env bash
# The MovieLens-1M GPU run behind bench/results/core.json (one H200): 3 seeds x each variant of
# the generative recommender and 3 seeds of SASRec side by side (same time budget for both),
# plus the docs-only Bible ablation; then one eval process per data set. Writes under $OUT.
# Needs .cache/bench_stage (python bench/core.py stage), .whl/ (bm25s + PyStemmer) and, for the
# Bible eval, .cache/gpu_a/ (the teacher parts and the peers' hits file from bench/gpu_retrieval.sh).
set -u
source bench/gpu_env.sh
export OMP_NUM_THREADS=1
MIN=${REC_MINUTES:-5.5}
for s in 0 1 2; do
  for v in ${REC_VARIANTS:-base ema}; do
    python3 bench/core.py train-rec --device cuda --threads 1 --seed $s --variant $v --train-json "{\"max_minutes\": $MIN}" --out $CK > $L/rec-$v-$s.log 2>&1 &
  done
  python3 bench/core.py train-sasrec --device cuda --threads 1 --seed $s --train-json "{\"max_minutes\": $MIN}" --out $CK > $L/sasrec-$s.log 2>&1 &
done
python3 bench/core.py train-retrieval --docs-only --device cuda --threads 2 --train-json "{\"max_minutes\": $MIN}" --out $CK > $L/docsonly.log 2>&1 &
if [ -n "${DENSE_STEPS:-}" ]; then
  python3 bench/core.py finetune-dense --device cuda --train-json "{\"steps\": $DENSE_STEPS}" --out $CK > $L/dense.log 2>&1 &
fi
if [ ! -d $CK/retrieval-seed0 ] && ls .cache/gpu_a/teacher.part.* >/dev/null 2>&1; then cat .cache/gpu_a/teacher.part.* | tar -xzf - -C $CK; fi
wait
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv > $OUT/gpu.txt
export OMP_NUM_THREADS=4
python3 bench/core.py eval --tasks rec --device cuda --ckpts $CK --results $OUT/core-rec.json > $L/eval-rec.log 2>&1 &
python3 bench/core.py eval --tasks retrieval --device cuda --ckpts $CK --results $OUT/core-bible.json --no-dense --extra .cache/gpu_a/bible-peers-hits.json > $L/eval-bible.log 2>&1
wait
cp $CK/*.json $L/ 2>/dev/null
tar -czf $OUT/logs.tar.gz -C $SCRATCH logs
tar -czf $OUT/teacher.tar.gz -C $CK retrieval-seed0 2>/dev/null
(cd $CK && tar -czf $OUT/rec-seed0.tar.gz rec-*-seed0 sasrec-seed0 2>/dev/null)
tail -n 2 $L/*.log
