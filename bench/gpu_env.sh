# Sourced by bench/gpu_*.sh: the GPU host's environment (offline, the carried MiniLM copy and
# wheels, exact numpy search instead of faiss, bulk encoding on the GPU).
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export EDGE_GR_MINILM_DIR=$PWD/.cache/bench_stage/minilm EDGE_GR_EXACT_NUMPY=1 EDGE_GR_EMBED_DEVICE=cuda
# Scratch on the GPU host (kept between calls while the machine stays warm: gpu_rec.sh reuses the teacher in $CK).
SCRATCH=${EDGE_GR_GPU_SCRATCH:-${TMPDIR:-/tmp}/edge_gr_gpu}
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target $SCRATCH/site .whl/*.whl && export PYTHONPATH=$SCRATCH/site
CK=$SCRATCH/ck; L=$SCRATCH/logs; mkdir -p $CK $L
