#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every host (jax.distributed reads the TPU
# environment; main.py initializes it when TPU_WORKER_HOSTNAMES lists several hosts).
#
#   launch/tpu_pod.sh TPU_NAME ZONE WORKDIR [extra main.py flags...]
#   e.g. launch/tpu_pod.sh my-v5p-64 us-east5-a gs://bucket/llm2clip_mimic \
#          --config.data.dirs=gs://bucket/prepared/mimic_cxr --config.text.model_dir=/models/LLM2VEC4CXR
#
# Every host needs the repo, its venv (`make setup`) and the prepared data (on GCS or a shared disk).
set -euo pipefail
TPU_NAME=${1:?TPU name}; ZONE=${2:?zone}; WORKDIR=${3:?workdir}; shift 3
REPO=${REPO:-~/cxrclip_jax}
CONFIG=${CONFIG:-configs/llm2clip.py:mimic}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command \
  "cd $REPO && .venv/bin/python -m cxrclip_jax.main --config=$CONFIG --workdir=$WORKDIR --distributed=true$ARGS"
