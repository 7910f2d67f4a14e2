#!/usr/bin/env bash
# Issue #3's training runs on a lent GPU (see README "Compression"); each stage fits the device tool's 10-minute limit.
#   stage 1: a larger MovieLens-1M teacher (4+4 layers x 256) and the Bible student + its pruned / grouped variants
#   stage 2: the MovieLens-1M student + variants, and the distillation ablation (students with one ingredient added at a time)
# Outputs under $OUT (checkpoint folders + report.json + logs). Usage: bash bench/compress_gpu.sh 1|2
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python}
ST=.cache/bench_stage
if [ "$1" = 1 ]; then
  $PY bench/core.py train --task rec --device cuda --only gen --max-minutes 6.5 --out "$OUT/ml-teacher" \
    --variants '[{"name": "big", "model": {"d_model": 256, "n_heads": 8, "n_enc_layers": 4, "n_dec_layers": 4, "dropout": 0.2}}]' \
    > "$OUT/ml-teacher.log" 2>&1 &
  $PY -m server.cli compress --teacher .cache/bench_ckpts/retrieval-model --data $ST/bible --out "$OUT/bible" \
    --variants fp32,pruned-30,pruned-50,grouped --student 128x2 --device cuda --epochs 60 --minutes 4.5 --patience 8 \
    --batch-size 512 --lr 3e-3 --recover-epochs 2 --eval-queries 1000 > "$OUT/bible.log" 2>&1 &
  wait
  rm -rf /tmp/ml-teacher && cp -r "$OUT/ml-teacher" /tmp/ml-teacher  # stage 2 reads it on the same warm machine
fi
if [ "$1" = 2 ]; then
  T=${TEACHER:-/tmp/ml-teacher/rec-model}
  common="--teacher $T --data $ST/ml-1m --device cuda --epochs 60 --minutes 4 --patience 8 --eval-queries 1000"
  $PY -m server.cli compress $common --out "$OUT/ml" --variants fp32,pruned-30,pruned-50,grouped --student 128x2 \
    --recover-epochs 2 > "$OUT/ml.log" 2>&1 &
  # ablation: each student adds one ingredient to the previous one
  $PY -m server.cli compress $common --out "$OUT/abl-ce" --variants fp32 --alpha 1 --rank-weight 0 --negative-weight 0 --no-seq-level > "$OUT/abl-ce.log" 2>&1 &
  $PY -m server.cli compress $common --out "$OUT/abl-kd" --variants fp32 --rank-weight 0 --negative-weight 0 --no-seq-level > "$OUT/abl-kd.log" 2>&1 &
  $PY -m server.cli compress $common --out "$OUT/abl-seq" --variants fp32 --rank-weight 0 --negative-weight 0 > "$OUT/abl-seq.log" 2>&1 &
  $PY -m server.cli compress $common --out "$OUT/abl-rank" --variants fp32 --negative-weight 0 > "$OUT/abl-rank.log" 2>&1 &
  $PY -m server.cli compress $common --out "$OUT/abl-hidden" --variants fp32 --hidden-weight 1.0 > "$OUT/abl-hidden.log" 2>&1 &
  # the Bible student's pruned / grouped variants (stage 1 distilled the student; bible/fp32 is copied back in)
  $PY -m server.cli compress --teacher .cache/bench_ckpts/retrieval-model --data $ST/bible --out "$OUT/bible" \
    --base ${BIBLE_BASE:-/tmp/bible/fp32} --variants pruned-30,pruned-50,grouped --device cuda --batch-size 512 --lr 3e-3 \
    --recover-epochs 2 --eval-queries 500 > "$OUT/bible2.log" 2>&1 &
  wait
fi
ls -R "$OUT" | head -50
