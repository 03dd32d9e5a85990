#!/usr/bin/env bash
# The benchmark venv: jaxtl with its test extra (torch CPU, the HF reference) plus KerasHub on the
# JAX backend as the second peer. Kept apart from the test venv: keras-hub must be installed with
# --no-deps (its tensorflow-text dependency only serves TF preprocessing, which the benchmark does
# not use), which a pyproject extra cannot express.
#   bench/setup.sh [VENV]          # default /work/benchvenv
#   VENV/bin/python bench/bench_step.py --quick
set -euo pipefail
VENV="${1:-/work/benchvenv}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -e "$REPO[test]"
"$VENV/bin/pip" install -q keras==3.15.1 sentencepiece
"$VENV/bin/pip" install -q --no-deps keras-hub==0.32.0
echo "KERAS_BACKEND=jax is set by bench/bench_step.py itself; run: $VENV/bin/python bench/bench_step.py --quick"
