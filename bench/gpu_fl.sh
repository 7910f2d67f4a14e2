#!/usr/bin/env bash
# The federated measurements of the issue "Federated learning that measurably helps" on one H200 (device tool).
# Needs .cache/gpu_build/ml-1m (items + interactions) and .whl/ (faiss, peft + transformers, opacus). Writes under $OUT.
#   STAGE=ceiling  base (cloud users) + centralized (every user), users scenario   (~7 min)
#   STAGE=screen   what to federate, no DP, chosen on validation                    (CANDIDATES, ROUNDS, MINUTES)
#   STAGE=dp       the chosen RECIPE at epsilon {0.5..8, inf} + the personal step   (RECIPE, CLIP, ROUNDS, MINUTES)
set -u
source bench/gpu_env.sh
export OMP_NUM_THREADS=1
D=.cache/gpu_build/ml-1m
C=$SCRATCH/flcache
case ${STAGE:-ceiling} in
ceiling)
  python3 bench/fl_ceiling.py --data $D --device cuda --scenarios users --cache $C --out $OUT > $L/ceiling.log 2>&1
  (cd $C && tar -czf $OUT/fl-models.tar.gz .) ;;
screen)
  python3 bench/fl_screen.py screen --data $D --device cuda --cache $C --parallel --rounds ${ROUNDS:-40} \
    --max-minutes ${MINUTES:-6} --save-dir $SCRATCH/finals ${CANDIDATES:+--candidates $CANDIDATES} --out $OUT > $L/screen.log 2>&1 ;;
dp)
  python3 bench/fl_screen.py dp --data $D --device cuda --cache $C --parallel --recipe $RECIPE --clip ${CLIP:-1.0} \
    --rounds ${ROUNDS:-40} --max-minutes ${MINUTES:-6} --save-dir $SCRATCH/finals --out $OUT > $L/dp.log 2>&1 &
  python3 bench/fl_screen.py personal --data $D --device cuda --cache $C --recipe $RECIPE \
    --final "$SCRATCH/finals/final-screen-$RECIPE.npz" --out $OUT > $L/personal.log 2>&1
  wait ;;
esac
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv > $OUT/gpu.txt
tail -n 30 $L/*.log
