#!/usr/bin/env bash
# The Bible GPU run behind bench/results/core.json (one H200): the generative teacher and the
# fine-tuned MiniLM peer trained side by side, then the peers evaluated in one process.
# Needs .cache/bench_stage (python bench/core.py stage) incl. minilm/ (fp16 copy of the weights)
# and .whl/ (bm25s + PyStemmer wheels for the host's Python). Writes everything under $OUT.
set -u
source bench/gpu_env.sh
export OMP_NUM_THREADS=4
MIN=${TEACHER_MINUTES:-7.5}
python3 bench/core.py train-retrieval --device cuda --threads 4 --train-json "{\"max_minutes\": $MIN}" --out $CK > $L/teacher.log 2>&1 &
T=$!
python3 bench/core.py finetune-dense --device cuda --train-json "{\"steps\": ${DENSE_STEPS:-1200}}" --out $CK > $L/dense.log 2>&1
python3 bench/core.py eval --tasks retrieval --device cuda --ckpts $CK --results $OUT/core-bible-peers.json --hits-out $OUT/bible-peers-hits.json > $L/eval-peers.log 2>&1
wait $T
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv > $L/gpu.txt
# the fp32 teacher back in parts under the tool's 16 MB-per-file limit (join: cat teacher.part.* | tar -xzf -)
(cd $CK && tar -czf - retrieval-seed0 retrieval-seed0.json | split -b 15M - $OUT/teacher.part.)
cp $CK/*.json $L/ 2>/dev/null
rm -f $OUT/*.png
tar -czf $OUT/logs.tar.gz -C $SCRATCH logs
tail -n 3 $L/teacher.log $L/dense.log $L/eval-peers.log
