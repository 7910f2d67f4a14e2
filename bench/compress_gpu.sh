#!/usr/bin/env bash
# Issue #3's training runs on a lent GPU (see README "Compression"); each stage fits the device tool's 10-minute limit
# (stages 2-3 read earlier outputs from /tmp on the same warm machine, or from .cache/gpu carried in).
#   stage 1: a larger MovieLens-1M teacher (4+4 layers x 256) and more training of the Bible student (2 x 128)
#   stage 2: the MovieLens-1M student and the distillation ablation (one ingredient added at a time)
#   stage 3: pruned-30 / pruned-50 / grouped variants of both students (progressive, distilled after each step)
# Outputs under $OUT (checkpoint folders + report.json + logs). Usage: bash bench/compress_gpu.sh 1|2|3
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python}
ST=.cache/bench_stage
BT=.cache/bench_ckpts/retrieval-model
MT=${ML_TEACHER:-/tmp/ml-teacher/rec-model}
if [ -d .cache/carry ]; then  # unpack what the device call carried (see README: stage, teacher and student without duplicates)
  mkdir -p .cache/bench_ckpts/retrieval-model .cache/gpu/bible/fp32
  cp -r .cache/carry/stage .cache/bench_stage
  cp .cache/carry/bt/* .cache/bench_ckpts/retrieval-model/
  cp .cache/carry/bs/* .cache/gpu/bible/fp32/
  for d in .cache/bench_ckpts/retrieval-model .cache/gpu/bible/fp32; do
    cp .cache/bench_stage/bible/ids.json $d/; zcat .cache/bench_stage/bible/docs.jsonl.gz > $d/items.jsonl
    cp .cache/carry/bt/tokenizer.json $d/
  done
fi
if [ "$1" = 1 ]; then
  $PY bench/core.py train --task rec --device cuda --only gen --max-minutes 6.5 --out "$OUT/ml-teacher" \
    --variants '[{"name": "big", "model": {"d_model": 256, "n_heads": 8, "n_enc_layers": 4, "n_dec_layers": 4, "dropout": 0.2}}]' \
    > "$OUT/ml-teacher.log" 2>&1 &
  # the Bible student: first trained 4.7 min (--student 128x2 --batch-size 512 --lr 3e-3, valid R@10 0.161), continued here
  $PY -m server.cli compress --teacher $BT --data $ST/bible --out "$OUT/bible" --variants fp32 --init ${BIBLE_INIT:-.cache/gpu/bible/fp32} \
    --device cuda --epochs 80 --minutes 8 --patience 10 --batch-size 1024 --lr 2e-3 --eval-queries 500 > "$OUT/bible.log" 2>&1 &
  wait
  rm -rf /tmp/ml-teacher /tmp/stage1 && cp -r "$OUT/ml-teacher" /tmp/ml-teacher && cp -r "$OUT" /tmp/stage1
  (cd /tmp/stage1 && tar --exclude=items.jsonl -cf "$OUT/bible.tar" bible *.log ml-teacher/*.json)
  (cd /tmp && tar --exclude=items.jsonl -cf - ml-teacher/rec-model | split -b 15M - "$OUT/teacher.tar.part-")
  rm -rf "$OUT"/ml-teacher "$OUT"/bible "$OUT"/*.log
fi
if [ "$1" = 2 ]; then
  common="--teacher $MT --data $ST/ml-1m --device cuda --epochs 80 --patience 10 --eval-queries 1000 --variants fp32"
  $PY -m server.cli compress $common --minutes 7.5 --out "$OUT/ml" > "$OUT/ml.log" 2>&1 &
  for abl in "ce --alpha 1 --rank-weight 0 --negative-weight 0 --no-seq-level" "kd --rank-weight 0 --negative-weight 0 --no-seq-level" \
             "seq --rank-weight 0 --negative-weight 0" "rank --negative-weight 0" "hidden --hidden-weight 1.0"; do
    set -- $abl; name=$1; shift
    $PY -m server.cli compress $common --minutes 6 --out "$OUT/abl-$name" "$@" > "$OUT/abl-$name.log" 2>&1 &
  done
  wait
  rm -rf /tmp/stage2 && cp -r "$OUT" /tmp/stage2
  # the device tool returns at most 8 files of <= 16 MiB: pack
  (cd /tmp/stage2 && tar --exclude=items.jsonl -cf "$OUT/ml.tar" ml && tar --exclude=items.jsonl -cf "$OUT/abl.tar" abl-*/report.json abl-*/fp32/edge_gr_model.json *.log)
  rm -rf "$OUT"/ml "$OUT"/abl-* "$OUT"/*.log
fi
if [ "$1" = 3 ]; then
  v="--variants pruned-30,pruned-50,grouped --device cuda --recover-epochs 2"
  $PY -m server.cli compress --teacher $MT --data $ST/ml-1m --base /tmp/stage2/ml/fp32 --out "$OUT/ml" $v --eval-queries 1000 > "$OUT/ml.log" 2>&1 &
  $PY -m server.cli compress --teacher $BT --data $ST/bible --base /tmp/stage1/bible/fp32 --out "$OUT/bible" $v \
    --batch-size 1024 --lr 2e-3 --eval-queries 500 > "$OUT/bible.log" 2>&1 &
  wait
  rm -rf /tmp/stage3 && cp -r "$OUT" /tmp/stage3
  (cd /tmp/stage3 && for d in ml/pruned-30 ml/pruned-50 ml/grouped bible/pruned-30 bible/pruned-50 bible/grouped; do
     [ -d $d ] && tar --exclude=items.jsonl -cf "$OUT/$(echo $d | tr / _).tar" $d; done; tar --exclude=items.jsonl -cf "$OUT/logs.tar" *.log */report.json)
  rm -rf "$OUT"/ml "$OUT"/bible "$OUT"/*.log
fi
ls -R "$OUT" | head -60
# stage 4 (after the ablation showed the sequence-level term, at weight 1 on 512 fixed histories, overfits them):
# the ML student with KD + light rank / hard-negative terms on 4,096 histories, and the ML *teacher* pruned / grouped
# (recovered by distillation), evaluated here because the checkpoints are too large to bring back.
if [ "$1" = 4 ]; then
  mkdir -p /tmp/mlt && (cd /tmp/mlt && cat "$OLDPWD"/.cache/carry4/teacher.tar.part-* | tar xf -) && MT=/tmp/mlt/ml-teacher/rec-model
  zcat .cache/carry4/ml-1m/items.jsonl.gz > $MT/items.jsonl  # the tar left the catalogue out (same file)
  cp "$ST/ml-1m/ids.json" /dev/null 2>&1 || { mkdir -p $ST && cp -r .cache/carry4/ml-1m $ST/; }
  $PY -m server.cli compress --teacher $MT --data $ST/ml-1m --device cuda --epochs 80 --patience 10 --eval-queries 1000 --variants fp32 \
    --minutes 6 --out "$OUT/ml" > "$OUT/ml.log" 2>&1 &
  for v in pruned-30,grouped pruned-50; do
    $PY -m server.cli compress --teacher $MT --data $ST/ml-1m --device cuda --student none --variants $v \
      --recover-epochs 2 --eval-queries 500 --lr 1e-3 --out /tmp/mlv-${v%%,*} > "$OUT/mlv-${v%%,*}.log" 2>&1 &
  done
  wait
  mkdir -p /tmp/mlv && mv /tmp/mlv-*/* /tmp/mlv/ 2>/dev/null
  $PY bench/eval_variants.py --device cuda --data $ST/ml-1m --out "$OUT/eval.json" $MT /tmp/mlv/pruned-30 /tmp/mlv/pruned-50 /tmp/mlv/grouped \
    > "$OUT/eval.log" 2>&1
  (cd "$OUT" && tar --exclude=items.jsonl -cf ml.tar ml && rm -rf ml)
fi
# stage 5: the KD-only ML student given the whole call (the ablation's best distilled recipe), a diagnostic student
# with the beam terms at 0.1, and pruned-30 of the ML teacher with 4 recovery epochs per 10% step (evaluated here).
if [ "$1" = 5 ]; then
  mkdir -p /tmp/mlt && (cd /tmp/mlt && cat "$OLDPWD"/.cache/carry4/teacher.tar.part-* | tar xf -) && MT=/tmp/mlt/ml-teacher/rec-model
  zcat .cache/carry4/ml-1m/items.jsonl.gz > $MT/items.jsonl
  [ -f "$ST/ml-1m/ids.json" ] || { mkdir -p $ST && cp -r .cache/carry4/ml-1m $ST/; }
  common="--teacher $MT --data $ST/ml-1m --device cuda --epochs 80 --patience 10 --eval-queries 1000 --variants fp32 --minutes 7.5"
  $PY -m server.cli compress $common --rank-weight 0 --negative-weight 0 --out "$OUT/ml-kd" > "$OUT/ml-kd.log" 2>&1 &
  $PY -m server.cli compress $common --out /tmp/ml-beam > "$OUT/ml-beam.log" 2>&1 &
  $PY -m server.cli compress --teacher $MT --data $ST/ml-1m --device cuda --student none --variants pruned-30 \
      --recover-epochs 4 --eval-queries 500 --lr 1e-3 --out /tmp/mlp > "$OUT/mlp.log" 2>&1 &
  wait
  $PY bench/eval_variants.py --device cuda --data $ST/ml-1m --out "$OUT/eval.json" /tmp/mlp/pruned-30 $MT > "$OUT/eval.log" 2>&1
  (cd "$OUT" && tar --exclude=items.jsonl -cf ml-kd.tar ml-kd && rm -rf ml-kd)
fi
# stage 6: the KD-only ML student again, its weights brought back (tar, no catalogue) for the CPU rows of bench/compression.py
if [ "$1" = 6 ]; then
  mkdir -p /tmp/mlt && (cd /tmp/mlt && cat "$OLDPWD"/.cache/carry4/teacher.tar.part-* | tar xf -) && MT=/tmp/mlt/ml-teacher/rec-model
  zcat .cache/carry4/ml-1m/items.jsonl.gz > $MT/items.jsonl
  [ -f "$ST/ml-1m/ids.json" ] || { mkdir -p $ST && cp -r .cache/carry4/ml-1m $ST/; }
  $PY -m server.cli compress --teacher $MT --data $ST/ml-1m --device cuda --epochs 80 --patience 10 --eval-queries 1000 \
    --variants fp32 --minutes ${MINUTES:-6} --out /tmp/ml-kd > "$OUT/ml-kd.log" 2>&1
  (cd /tmp && tar --exclude=items.jsonl -cf "$OUT/ml-kd.tar" ml-kd)
fi
