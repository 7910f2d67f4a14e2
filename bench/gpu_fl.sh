#!/usr/bin/env bash
# The federated measurements of the issue "Federated learning that measurably helps" on one H200 (device tool).
# Needs .cache/gpu_build/ml-1m (items + interactions) and .whl/ (faiss, peft + transformers + httpx2, opacus). Writes under
# $OUT. The models are cached in $FLCACHE (default .cache/gpu_fl, carry it to the next call: the host may have gone cold).
#   STAGE=ceiling  base (cloud users) + centralized (every user), users scenario   (~7 min)
#   STAGE=screen   what to federate, no DP, chosen on validation                    (CANDIDATES, ROUNDS, MINUTES, EVERY)
#   STAGE=dp       the chosen RECIPE at epsilon {0.5..8, inf} + the personal step   (RECIPE, CLIP, ROUNDS, MINUTES, EPSILONS;
#                  CEILING=1 re-measures the ceiling on the same base alongside)
set -u
source bench/gpu_env.sh
export OMP_NUM_THREADS=1
D=.cache/gpu_build/ml-1m
C=${FLCACHE:-.cache/gpu_fl}
A="--data $D --device cuda --cache $C"
python3 bench/fl_screen.py prepare $A > $L/prepare.log 2>&1
# a 2-round smoke run of the first candidate (seconds) before spending the call on all of them
FIRST=${CANDIDATES:-${RECIPE:-}}; FIRST=${FIRST%%,*}
if [ -n "$FIRST" ] && [ "${SMOKE:-1}" = 1 ]; then
  python3 bench/fl_screen.py screen $A --candidates "$FIRST" --rounds 2 --eval-users 50 --eval-every 1 --out $SCRATCH/smoke > $L/smoke.log 2>&1
  grep -q FAILED $L/smoke.log && { tail -n 40 $L/smoke.log; exit 3; }
fi
case ${STAGE:-ceiling} in
ceiling)
  python3 bench/fl_ceiling.py --data $D --device cuda --scenarios users --cache $C --out $OUT > $L/ceiling.log 2>&1 ;;
screen)
  python3 bench/fl_screen.py screen $A --parallel --rounds ${ROUNDS:-40} --eval-every ${EVERY:-10} \
    --max-minutes ${MINUTES:-6} --save-dir $SCRATCH/finals ${CANDIDATES:+--candidates $CANDIDATES} --out $OUT > $L/screen.log 2>&1 ;;
dp)
  [ "${CEILING:-0}" = 1 ] && { python3 bench/fl_ceiling.py --data $D --device cuda --scenarios users --cache $C --out $OUT > $L/ceiling.log 2>&1 & }
  python3 bench/fl_screen.py dp $A --parallel --recipe $RECIPE --clip ${CLIP:-1.0} --eval-every ${EVERY:-10} \
    ${EPSILONS:+--epsilons $EPSILONS} --rounds ${ROUNDS:-40} --max-minutes ${MINUTES:-6} --save-dir $SCRATCH/finals --out $OUT > $L/dp.log 2>&1
  [ "${PERSONAL:-1}" = 1 ] && python3 bench/fl_screen.py personal $A --recipe $RECIPE \
    --final "$SCRATCH/finals/final-dp-$RECIPE.npz" --out $OUT > $L/personal.log 2>&1
  wait
  cp "$SCRATCH/finals/final-dp-$RECIPE.npz" $OUT/final-dp-nodp.npz 2>/dev/null ;;
esac
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv > $OUT/gpu.txt
[ "${TAR:-1}" = 1 ] && (cd $C && tar -czf $OUT/fl-cache.tar.gz .)
tail -n 30 $L/*.log
