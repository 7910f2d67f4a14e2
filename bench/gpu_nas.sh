#!/usr/bin/env bash
# The full-preset NAS of both tasks on one GPU host (docs/benchmarks.md): every candidate distilled from
# the #12 teacher on the GPU, exported (ONNX Runtime int8) and timed on the host's CPU at one thread,
# each worker pinned to its own core (`edge-gr nas --workers`, one JournalStorage study per task).
#   STAGE=nas   both studies side by side; brings back study.log / nas.json / student.json / pareto.png
#   STAGE=final the ML-1M study beside the Bible build of its study's choice (the GPU minutes of one session)
#   STAGE=build `edge-gr build --student-config` of the chosen students (--stop-after student): the
#               export + verify stages then run on the CPU machine with the same --work.
# Needs .cache/gpu_nas/{bible,ml-1m} (data), teachers.tgz (rec-teacher, retrieval-teacher), whl/ (onnxscript,
# onnx-ir, optuna, colorlog, ml_dtypes, pyyaml for python3.12) and, for STAGE=build, {bible,ml-1m}.student.json.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
G=.cache/gpu_nas
S=${TMPDIR:-/tmp}/edge_gr_nas; mkdir -p $S/logs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $S/site $G/whl/*.whl && export PYTHONPATH=$S/site
tar -xzf $G/teachers.tgz -C $S
python3 -c "import onnx, onnxscript, onnxruntime, optuna, torch; print('onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__, 'optuna', optuna.__version__, 'torch', torch.__version__)"
N=$(nproc); echo "cores $N"; grep -m1 "model name" /proc/cpuinfo
case ${STAGE:-nas} in
nas)
  BW=${BIBLE_WORKERS:-8}; RW=${REC_WORKERS:-6}
  taskset -c 0-$((BW - 1)) timeout ${HARD_STOP:-540} python3 -m server.cli nas --task retrieval --data $G/bible --checkpoint $S/retrieval-teacher \
    --preset full --device cuda --out $S/nas-bible --workers $BW --trials ${TRIALS:-40} --budget ${BIBLE_BUDGET:-6} --epochs 3 --steps-per-epoch 300 \
    > $S/logs/nas-bible.log 2>&1 &
  taskset -c $BW-$((BW + RW - 1)) timeout ${HARD_STOP:-540} python3 -m server.cli nas --task rec --data $G/ml-1m --checkpoint $S/rec-teacher \
    --preset full --device cuda --out $S/nas-ml-1m --workers $RW --trials ${TRIALS:-40} --budget ${REC_BUDGET:-6.5} --epochs 3 \
    > $S/logs/nas-ml-1m.log 2>&1 &
  wait
  for t in bible ml-1m; do mkdir -p $OUT/nas-$t; cp $S/nas-$t/{study.log,nas.json,student.json,pareto.png} $OUT/nas-$t/ 2>/dev/null; done
  ;;
final)  # the ML-1M study (cores 0-11) beside the Bible build of the architecture its study chose (cores 12-15)
  taskset -c 0-11 timeout ${HARD_STOP:-560} python3 -m server.cli nas --task rec --data $G/ml-1m --checkpoint $S/rec-teacher \
    --preset full --device cuda --out $S/nas-ml-1m --workers 6 --trials ${TRIALS:-40} --budget ${REC_BUDGET:-6} --epochs 3 \
    > $S/logs/nas-ml-1m.log 2>&1 &
  OMP_NUM_THREADS=4 taskset -c 12-15 python3 -m server.cli build --task retrieval --data $G/bible --checkpoint $S/retrieval-teacher \
    --preset full --device cuda --student-config $G/bible.student.json --student-minutes ${BIBLE_MINUTES:-7} \
    --out $S/bible --work $S/bible.build --stop-after student > $S/logs/bible.log 2>&1 &
  wait
  mkdir -p $OUT/nas-ml-1m; cp $S/nas-ml-1m/{study.log,nas.json,student.json,pareto.png} $OUT/nas-ml-1m/ 2>/dev/null
  (cd $S && tar -czf - bible.build | split -b 15M - $OUT/bible-student.part.)
  ;;
bible-nas)  # resume the Bible study (its first 19 trials replayed one seed across workers) with the whole host
  mkdir -p $S/nas-bible && cp $G/out-nas/nas-bible/study.log $S/nas-bible/
  BW=${BIBLE_WORKERS:-12}
  taskset -c 0-$((BW - 1)) timeout ${HARD_STOP:-560} python3 -m server.cli nas --task retrieval --data $G/bible --checkpoint $S/retrieval-teacher \
    --preset full --device cuda --out $S/nas-bible --workers $BW --trials ${TRIALS:-60} --budget ${BIBLE_BUDGET:-5} --epochs 2 --steps-per-epoch 300 \
    > $S/logs/nas-bible.log 2>&1
  mkdir -p $OUT/nas-bible; cp $S/nas-bible/{study.log,nas.json,student.json,pareto.png} $OUT/nas-bible/ 2>/dev/null
  ;;
build)
  b() {  # task data teacher name
    python3 -m server.cli build --task $1 --data $G/$2 --checkpoint $S/$3 --preset full --device cuda --student-config $G/$4.student.json \
      --out $S/$4 --work $S/$4.build --stop-after student > $S/logs/$4.log 2>&1
  }
  b retrieval bible retrieval-teacher bible & b rec ml-1m rec-teacher ml-1m &
  wait
  (cd $S && tar -czf - bible.build ml-1m.build | split -b 15M - $OUT/students.part.)
  ;;
esac
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv > $S/logs/gpu.txt
tar -czf $OUT/logs.tar.gz -C $S logs
tail -n 5 $S/logs/*.log
