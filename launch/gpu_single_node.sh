#!/usr/bin/env bash
# One multi-GPU node: one jaxtl process drives every visible GPU. The mesh comes from the config
# (configs/glue_sst2.yaml: mesh.data=-1, plain data parallelism over all GPUs; for models or
# batches that do not fit, configs/glue_sst2_base_fsdp.yaml shards parameters and optimizer state
# over the GPUs with FSDP, bf16 compute and remat). No --distributed: one process needs no peers.
#
# Usage (from the repository root):
#   INSTALL=1 launch/gpu_single_node.sh                  # first time: pip install jax[cuda12] + jaxtl
#   launch/gpu_single_node.sh --set train.batch_size=64  # extra arguments go to `jaxtl TASK`
#   CONFIG=configs/glue_sst2_base_fsdp.yaml WORKDIR=runs/sst2_fsdp launch/gpu_single_node.sh
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/gpu_single_node.sh       # a subset of the GPUs
# Environment: CONFIG (configs/glue_sst2.yaml), TASK (finetune|pretrain; default: the config's
# task), WORKDIR (runs/<config name>), PYTHON (python3), INSTALL=1 to install first.
# Rerunning the same command resumes from the workdir's latest checkpoint.
set -euo pipefail

CONFIG=${CONFIG:-configs/glue_sst2.yaml}
WORKDIR=${WORKDIR:-runs/$(basename "$CONFIG" .yaml)}
PYTHON=${PYTHON:-python3}

if [[ "${INSTALL:-0}" == 1 ]]; then
  # The jax minor pyproject.toml pins, with its CUDA 12 wheels (CUDA and cuDNN come from pip).
  "$PYTHON" -m pip install -U "jax[cuda12]>=0.10.2,<0.11" -e .
fi
TASK=${TASK:-$("$PYTHON" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("task", "finetune"))' "$CONFIG")}

"$PYTHON" - <<'EOF'
import jax
gpus = [d for d in jax.devices() if d.platform == "gpu"]
if not gpus:
    raise SystemExit(f"no GPU visible to JAX (devices: {jax.devices()}); install jax[cuda12] (INSTALL=1)")
print(f"{len(gpus)} GPUs: {gpus[0].device_kind}", flush=True)
EOF

exec "$PYTHON" -m jaxtl.cli "$TASK" --config "$CONFIG" --workdir "$WORKDIR" "$@"
