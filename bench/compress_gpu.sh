#!/usr/bin/env bash
# Issue #3's training runs on a lent GPU (see README "Compression"); each stage fits the device tool's 10-minute limit
# (stages 2-3 read earlier outputs from /tmp on the same warm machine, or from .cache/gpu carried in).
#   stage 1: a larger MovieLens-1M teacher (4+4 layers x 256) and a first Bible student (2 x 128)
#   stage 2: the MovieLens-1M student, the distillation ablation (one ingredient added at a time), more Bible student training
#   stage 3: pruned-30 / pruned-50 / grouped variants of both students (progressive, distilled after each step)
# Outputs under $OUT (checkpoint folders + report.json + logs). Usage: bash bench/compress_gpu.sh 1|2|3
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python}
ST=.cache/bench_stage
BT=.cache/bench_ckpts/retrieval-model
MT=${ML_TEACHER:-/tmp/ml-teacher/rec-model}
if [ "$1" = 1 ]; then
  $PY bench/core.py train --task rec --device cuda --only gen --max-minutes 6.5 --out "$OUT/ml-teacher" \
    --variants '[{"name": "big", "model": {"d_model": 256, "n_heads": 8, "n_enc_layers": 4, "n_dec_layers": 4, "dropout": 0.2}}]' \
    > "$OUT/ml-teacher.log" 2>&1 &
  $PY -m server.cli compress --teacher $BT --data $ST/bible --out "$OUT/bible" --variants fp32 --student 128x2 --device cuda \
    --epochs 60 --minutes 4.5 --patience 8 --batch-size 512 --lr 3e-3 --eval-queries 1000 > "$OUT/bible.log" 2>&1 &
  wait
  rm -rf /tmp/ml-teacher && cp -r "$OUT/ml-teacher" /tmp/ml-teacher
fi
if [ "$1" = 2 ]; then
  common="--teacher $MT --data $ST/ml-1m --device cuda --epochs 80 --patience 10 --eval-queries 1000 --variants fp32"
  $PY -m server.cli compress $common --minutes 7.5 --out "$OUT/ml" > "$OUT/ml.log" 2>&1 &
  for abl in "ce --alpha 1 --rank-weight 0 --negative-weight 0 --no-seq-level" "kd --rank-weight 0 --negative-weight 0 --no-seq-level" \
             "seq --rank-weight 0 --negative-weight 0" "rank --negative-weight 0" "hidden --hidden-weight 1.0"; do
    set -- $abl; name=$1; shift
    $PY -m server.cli compress $common --minutes 6 --out "$OUT/abl-$name" "$@" > "$OUT/abl-$name.log" 2>&1 &
  done
  $PY -m server.cli compress --teacher $BT --data $ST/bible --out "$OUT/bible" --variants fp32 --init ${BIBLE_INIT:-.cache/gpu/bible/fp32} \
    --device cuda --epochs 80 --minutes 8 --patience 10 --batch-size 1024 --lr 2e-3 --eval-queries 500 > "$OUT/bible.log" 2>&1 &
  wait
  rm -rf /tmp/stage2 && cp -r "$OUT" /tmp/stage2
  # the device tool returns at most 8 files of <= 16 MiB: pack
  (cd /tmp/stage2 && tar cf "$OUT/ml.tar" ml && tar cf "$OUT/bible.tar" bible && tar cf "$OUT/abl.tar" abl-* *.log)
  (cd /tmp && tar cf - ml-teacher | split -b 15M - "$OUT/teacher.tar.part-")
  rm -rf "$OUT"/ml "$OUT"/bible "$OUT"/abl-* "$OUT"/*.log
fi
if [ "$1" = 3 ]; then
  v="--variants pruned-30,pruned-50,grouped --device cuda --recover-epochs 2"
  $PY -m server.cli compress --teacher $MT --data $ST/ml-1m --base /tmp/stage2/ml/fp32 --out "$OUT/ml" $v --eval-queries 1000 > "$OUT/ml.log" 2>&1 &
  $PY -m server.cli compress --teacher $BT --data $ST/bible --base /tmp/stage2/bible/fp32 --out "$OUT/bible" $v \
    --batch-size 1024 --lr 2e-3 --eval-queries 500 > "$OUT/bible.log" 2>&1 &
  wait
  rm -rf /tmp/stage3 && cp -r "$OUT" /tmp/stage3
  (cd /tmp/stage3 && for d in ml/pruned-30 ml/pruned-50 ml/grouped bible/pruned-30 bible/pruned-50 bible/grouped; do
     [ -d $d ] && tar cf "$OUT/$(echo $d | tr / _).tar" $d; done; tar cf "$OUT/logs.tar" *.log */report.json)
  rm -rf "$OUT"/ml "$OUT"/bible "$OUT"/*.log
fi
ls -R "$OUT" | head -60
