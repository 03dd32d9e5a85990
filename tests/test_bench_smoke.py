"""The accelerator benchmark runs end to end (tiny shapes, CPU) so it is not broken when a GPU is."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_accelerator_benchmark_smoke(tmp_path):
    out = tmp_path / "accelerator.json"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO),
               XLA_FLAGS="")  # one device, not the 8 faked ones conftest asks for
    proc = subprocess.run(["bash", str(REPO / "bench" / "accelerator.sh"), "--smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert [r["task"] for r in record["results"]] == ["finetune", "pretrain"]
    for r in record["results"]:
        assert r["loss_finite"] and r["step_s"] > 0 and r["tokens_per_s"] > 0
        assert 0 < r["mfu_vs_measured_matmul"] < 1.5, r  # not a wrong FLOPs count by a factor
        assert r["dtype"] == "bfloat16" and r["param_dtype"] == "float32"
    assert "MFU" in proc.stdout and "tokens/s" in proc.stdout
