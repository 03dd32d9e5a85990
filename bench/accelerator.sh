#!/usr/bin/env bash
# One-command accelerator benchmark: BERT-base fine-tuning and pretraining steps at seq 128 and
# 512, bf16 compute / fp32 params, fused attention (cuDNN on GPU); tokens/s, step time and MFU
# against the vendor's peak and a measured matmul peak -> bench/results/accelerator-<device>.json.
#   bench/accelerator.sh            # on a GPU/TPU host
#   bench/accelerator.sh --smoke    # tiny shapes, runs on CPU in seconds
# PYTHON picks the interpreter (default: python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" bench/bench_accelerator.py "$@"
