"""Multi-host training, on one machine: two processes x 4 CPU devices == one process x 8 devices.

The real CLI runs three times at once on a tiny fine-tuning config (dropout on):

* one process with 8 faked CPU devices;
* two processes with 4 faked CPU devices each, joined through ``jax.distributed.initialize``
  (``--coordinator 127.0.0.1:PORT --num-processes 2 --process-id i``; gloo collectives).

Each of the two processes loads only its rows of every batch and ``jax.make_array_from_process_
local_data`` assembles the global batch, so both runs train on the same global batches over the
same 8-device mesh: train losses, evaluation and the exported model must agree. Process 0 alone
writes logs, metrics and exports; every process writes its shards of each checkpoint.

``launch/local_multiprocess.sh`` runs the same thing by hand.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import transformers
import yaml
from helpers import make_tiny_checkpoint, make_tokenizer, sentiment_rows, write_csv

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # a process whose peer never comes waits for it until killed here
RTOL = 1e-5
LR = 3e-3
ATOL = 1e-4 * LR
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(num_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        # Faked devices must be set before JAX starts; backend optimisations off halve compile
        # time (the same for all three processes, so the numbers stay comparable).
        XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} "
                  "--xla_backend_optimization_level=0",
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
    )
    return env


def jaxtl_cmd(config: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxtl.cli", "finetune", "--config", str(config),
            "--workdir", str(workdir), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run single (8 devices) and multi (2 x 4 devices) side by side; return their workdirs."""
    root = tmp_path_factory.mktemp("multiprocess")
    tokenizer = make_tokenizer(root)
    checkpoint = make_tiny_checkpoint(root, tokenizer, cls=transformers.BertModel)
    rows = sentiment_rows(88, seed=3)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "task": "finetune",
        "model": {"pretrained": str(checkpoint)},
        "data": {"train_file": write_csv(root / "train.csv", ["sentence", "label"], rows[:64]),
                 # 24 rows in batches of 16: the second one is padded, across processes
                 "validation_file": write_csv(root / "valid.csv", ["sentence", "label"], rows[64:]),
                 "max_seq_length": 32, "bucket_sizes": [32]},
        "optim": {"lr": LR, "warmup_ratio": 0.25},
        "mesh": {"data": 2, "fsdp": -1, "tensor": 2},  # the batch and the weights split
        "train": {"batch_size": 16, "eval_batch_size": 16, "max_steps": STEPS, "log_every": 1,
                  "eval_every": 100, "save_every": 100, "seed": 0, "progress": False,
                  "tensorboard": False},
    }))
    single, multi = root / "single", root / "multi"
    port = free_port()
    procs = {
        "single": subprocess.Popen(jaxtl_cmd(config, single), env=child_env(8), cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    for i in range(2):
        procs[f"process {i}"] = subprocess.Popen(
            jaxtl_cmd(config, multi, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                      "--process-id", str(i)),
            env=child_env(4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    outputs = {}
    try:
        for name, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish within {TIMEOUT_S} s")
            outputs[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (code, out, err) in outputs.items():
        assert code == 0, f"{name} exited {code}\n--- stdout\n{out}\n--- stderr\n{err[-5000:]}"
    return {"single": single, "multi": multi, "outputs": outputs}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # each line whole JSON


def test_two_processes_form_one_eight_device_mesh(runs):
    _, out0, err0 = runs["outputs"]["process 0"]
    assert "over 8 devices (2 processes)" in err0, err0[-3000:]
    _, _, err_single = runs["outputs"]["single"]
    assert "over 8 devices (1 processes)" in err_single


def test_train_losses_match_single_process(runs):
    single = read_jsonl(runs["single"] / "metrics.jsonl")
    multi = read_jsonl(runs["multi"] / "metrics.jsonl")
    # One line per event, written once: process 1 wrote nothing here.
    assert [(r["split"], r["step"]) for r in multi] == [(r["split"], r["step"]) for r in single]
    assert [r["step"] for r in multi if r["split"] == "train"] == list(range(1, STEPS + 1))
    worst = 0.0
    for s, m in zip(single, multi):
        for key in ("loss", "grad_norm", "accuracy", "lr"):
            if key in s:
                np.testing.assert_allclose(m[key], s[key], rtol=RTOL, err_msg=f"{key} at {s}")
        if s["split"] == "train":
            worst = max(worst, abs(m["loss"] - s["loss"]) / abs(s["loss"]))
    losses = [r["loss"] for r in multi if r["split"] == "train"]
    print(f"\ntrain losses (2 processes): {losses}; largest relative difference to 1 process {worst:.1e}")


def test_evaluation_matches_single_process(runs):
    single = json.loads((runs["single"] / "eval_results.json").read_text())
    multi = json.loads((runs["multi"] / "eval_results.json").read_text())
    assert multi["validation"]["examples"] == single["validation"]["examples"] == 24
    for key in ("loss", "accuracy", "f1", "mcc"):
        if key in single["validation"]:
            np.testing.assert_allclose(multi["validation"][key], single["validation"][key], rtol=RTOL)


def test_exported_model_matches_single_process(runs):
    from safetensors.numpy import load_file

    for export in ("final", "best"):
        single = load_file(runs["single"] / export / "model.safetensors")
        multi = load_file(runs["multi"] / export / "model.safetensors")
        assert single.keys() == multi.keys()
        diff_sq, norm_sq, worst = 0.0, 0.0, (0.0, "")
        for name in single:
            a, b = single[name].astype(np.float64), multi[name].astype(np.float64)
            if name.endswith("attention.self.key.bias"):
                # Its true gradient is zero (softmax ignores a shift shared by all keys): what
                # it holds is ~1e-10 of Adam-scaled rounding noise, in any two runs.
                assert np.abs(a).max() < 1e-6 and np.abs(b).max() < 1e-6, name
            diff_sq += np.sum((a - b) ** 2)
            norm_sq += np.sum(a**2)
            # as np.allclose: atol in units of the lr, rtol for weights far from 0 (LayerNorm ~1)
            worst = max(worst, (float((np.abs(a - b) / (ATOL + RTOL * np.abs(a))).max()), name))
        overall = float(np.sqrt(diff_sq / norm_sq))
        print(f"\n{export}: 2 processes vs 1: relative L2 over all weights {overall:.1e}; "
              f"largest |a - b| / (atol + rtol |a|) {worst[0]:.2f} ({worst[1]})")
        assert overall <= RTOL, f"{export}: weights differ by {overall:.1e} (relative L2)"
        # Per weight, with atol in units of the learning rate: Adam moves a weight by about the
        # lr per step whatever its gradient, so another batch or dropout mask would differ by ~lr.
        # Not relative per tensor: a weight whose updates cancel (the 2-class bias here, whose
        # gradient flips sign with the batch's label balance, ends at ~1e-7; the attention key
        # bias, with a zero true gradient, at ~1e-10) is rounding noise in any two runs.
        assert worst[0] <= 1.0, f"{export}/{worst[1]}: |a - b| is {worst[0]:.1f} x (atol + rtol |a|)"
        # ... and it loads in transformers, labels included.
        model = transformers.BertForSequenceClassification.from_pretrained(runs["multi"] / export)
        assert model.config.id2label == {0: "negative", 1: "positive"}


def test_process_0_writes_files_and_every_process_writes_checkpoints(runs):
    multi = runs["multi"]
    names = sorted(p.name for p in multi.iterdir())
    assert names == sorted(p.name for p in runs["single"].iterdir()), names
    assert not [p for p in multi.rglob("*.tmp*")], "a half-written export or temp file was left"
    ckpt_steps = sorted(int(p.name) for p in (multi / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpt_steps == [STEPS]  # the final one (save_every is longer than the run)
    for step in ckpt_steps:
        state = multi / "checkpoints" / str(step) / "state"
        # Each process wrote its own shards (orbax OCDBT: one folder per process).
        assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()
    # The CLI prints the results on process 0 only (gloo also prints connection lines there).
    out0, out1 = runs["outputs"]["process 0"][1], runs["outputs"]["process 1"][1]
    start = out0.index("\n{") + 1 if not out0.startswith("{") else 0
    results, _ = json.JSONDecoder().raw_decode(out0[start:])
    assert results["step"] == STEPS
    assert "{" not in out1, out1


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_to_one_process_stops_every_process_at_one_agreed_step(tmp_path, sig):
    """Only process 1 is signalled; both agree at a step boundary, save that step together and
    exit 128 + the signal number; the rerun resumes from it."""
    import signal as signal_lib

    tokenizer = make_tokenizer(tmp_path)
    checkpoint = make_tiny_checkpoint(tmp_path, tokenizer, cls=transformers.BertModel)
    rows = sentiment_rows(64, seed=5)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "task": "finetune",
        "model": {"pretrained": str(checkpoint)},
        "data": {"train_file": write_csv(tmp_path / "train.csv", ["sentence", "label"], rows),
                 "max_seq_length": 32, "bucket_sizes": [32]},
        "mesh": {"data": -1},
        "train": {"batch_size": 16, "max_steps": 400, "log_every": 1, "eval_every": 1000,
                  "save_every": 1000, "save_every_minutes": None, "progress": False,
                  "tensorboard": False},
    }))
    workdir = tmp_path / "run"
    port = free_port()
    procs = [
        subprocess.Popen(
            jaxtl_cmd(config, workdir, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                      "--process-id", str(i)),
            env=child_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert all(p.poll() is None for p in procs), "a process ended before the signal"
        procs[1].send_signal(getattr(signal_lib, sig))
        outputs = [p.communicate(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    expected = 128 + int(getattr(signal_lib, sig))
    for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == expected, f"process {i} exited {p.returncode}\n{err[-3000:]}"
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 400, saved
    state = workdir / "checkpoints" / str(saved[0]) / "state"
    assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()
    assert f"at step {saved[0]}" in outputs[0][1]
