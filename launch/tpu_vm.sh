#!/usr/bin/env bash
# Cloud TPU VM slice (e.g. v4-32 = 4 hosts x 4 chips): optionally create it, copy this repository
# to every worker, install it with jax[tpu], and run one jaxtl process per worker. `--distributed`
# calls jax.distributed.initialize(), which on TPU VMs finds the coordinator and its peers itself.
#
# Config: configs/glue_sst2_base_fsdp.yaml by default (BERT-base on SST-2, FSDP over every chip of
# the slice, bf16 compute, remat); for pretraining: CONFIG=configs/pretrain_base_fsdp.yaml
# (mesh.fsdp = chips per host, e.g. --set mesh.fsdp=4 on v4). train.batch_size is global and must
# divide by the number of hosts and by data x fsdp.
#
# Usage (from the repository root, with gcloud authenticated):
#   TPU_NAME=jaxtl-v4 ZONE=us-central2-b CREATE=1 launch/tpu_vm.sh        # create + setup + run
#   TPU_NAME=jaxtl-v4 ZONE=us-central2-b WORKDIR=/mnt/shared/runs/sst2 launch/tpu_vm.sh --set train.epochs=1
#   TPU_NAME=jaxtl-v4 ZONE=us-central2-b STEP=run launch/tpu_vm.sh        # skip copy + install
# Environment: TPU_NAME, ZONE (required); PROJECT (gcloud's default); CREATE=1 with
# ACCELERATOR (v4-32) and VERSION (tpu-ubuntu2204-base) to create the slice; STEP (all|setup|run);
# CONFIG; TASK (default: the config's task); WORKDIR (default ~/runs/<config>, see below).
#
# WORKDIR must be a folder every worker sees (an NFS/Filestore mount, or a gcsfuse-mounted bucket):
# every process writes its shards of each checkpoint there and process 0 writes logs, metrics and
# exports. A local default works for a single-host slice (v4-8, v5e-8) only. Rerunning resumes.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CONFIG=${CONFIG:-configs/glue_sst2_base_fsdp.yaml}
TASK=${TASK:-$(python3 -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("task", "finetune"))' "$CONFIG")}
WORKDIR=${WORKDIR:-"~/runs/$(basename "$CONFIG" .yaml)"}
STEP=${STEP:-all}
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE" ${PROJECT:+--project "$PROJECT"})

if [[ "${CREATE:-0}" == 1 ]]; then
  "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type "${ACCELERATOR:-v4-32}" --version "${VERSION:-tpu-ubuntu2204-base}"
fi

if [[ "$STEP" == all || "$STEP" == setup ]]; then
  # The committed tree (git archive), the same on every worker.
  archive=$(mktemp -t jaxtl-XXXXXX.tar.gz)
  git archive --format=tar.gz -o "$archive" HEAD
  "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:~/jaxtl.tar.gz" "${WHERE[@]}" --worker=all
  rm -f "$archive"
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="
    set -e
    rm -rf ~/jaxtl && mkdir -p ~/jaxtl && tar -xzf ~/jaxtl.tar.gz -C ~/jaxtl
    python3 -m venv ~/jaxtl-venv
    ~/jaxtl-venv/bin/pip install -q -U pip
    ~/jaxtl-venv/bin/pip install -q 'jax[tpu]>=0.10.2,<0.11' -e ~/jaxtl
    ~/jaxtl-venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_devices())'
  "
fi

if [[ "$STEP" == all || "$STEP" == run ]]; then
  # Quote the user's extra arguments for the remote shell.
  extra=""
  (($# > 0)) && extra=$(printf ' %q' "$@")
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="
    cd ~/jaxtl && ~/jaxtl-venv/bin/jaxtl $TASK --distributed --config $CONFIG --workdir $WORKDIR$extra
  "
fi
