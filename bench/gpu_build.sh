#!/usr/bin/env bash
# The full-preset `edge-gr build` training stage on one GPU host (as run for docs/benchmarks.md):
# the device students of ML-1M and the Bible distilled from the #12 teachers, side by side. The
# export + verify stages then run on the CPU machine with the same --work (finished stages skip).
# Needs .cache/gpu_build/{bible,ml-1m} (data folders) and {retrieval,rec}-teacher (checkpoints).
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS=4
G=.cache/gpu_build
SCRATCH=${EDGE_GR_GPU_SCRATCH:-${TMPDIR:-/tmp}/edge_gr_gpu}; mkdir -p $SCRATCH/logs
build() {  # task data teacher name
  python3 -m server.cli build --task $1 --data $G/$2 --checkpoint $G/$3 --preset full --device cuda \
    --out $SCRATCH/$4 --work $SCRATCH/$4.build --stop-after student > $SCRATCH/logs/$4.log 2>&1
}
# TASKS="retrieval rec" (default both, side by side on the one GPU)
for t in ${TASKS:-retrieval rec}; do
  case $t in
    retrieval) build retrieval bible retrieval-teacher bible & ;;
    rec) build rec ml-1m rec-teacher ml-1m & ;;
  esac
done
wait
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv > $SCRATCH/logs/gpu.txt
(cd $SCRATCH && tar -czf - *.build | split -b 15M - $OUT/students.part.)
tar -czf $OUT/logs.tar.gz -C $SCRATCH logs
grep -h "epoch\|done\|Error\|error" $SCRATCH/logs/*.log | tail -n 30
