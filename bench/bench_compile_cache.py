"""Time to the first finished train step, without and with JAX's persistent compilation cache.

Starts a fresh Python process per measurement (as a user's ``jaxtl finetune`` does) that loads
MiniLM-L6 + a classification head, builds jaxtl's jitted train step and runs it once per demo
bucket shape ([32, 16], [32, 32], [32, 48], [32, 64] by default); reports the seconds from process
start to each finished step. Three processes: no cache, cold cache (empty folder: compiles and
writes), warm cache (the same folder: reads).

    python bench/bench_compile_cache.py                   # demo buckets
    python bench/bench_compile_cache.py --lengths 64      # one shape
    python bench/bench_compile_cache.py --cli             # the real `jaxtl finetune` demo start-up

``--cli`` runs ``jaxtl finetune`` on configs/demo_finetune.yaml (one update, no held-out splits)
in a fresh process per case and reads ``first_step_s`` (process start -> first finished update:
imports, reading and tokenizing the 10k sentences, loading MiniLM, compiling) from the run's
``split: compile`` line in metrics.jsonl. Cases: cache off (``JAXTL_COMPILATION_CACHE=off``),
cold (an empty cache folder), warm (the same folder again).

Appends to bench/results/compile_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
start = float(sys.argv[1]); lengths = [int(x) for x in sys.argv[2].split(",")]; cache = sys.argv[3]
import jax
if cache != "-":
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import numpy as np
from flax.training.train_state import TrainState
from jaxtl import config as config_lib, hf, optim, steps
model, params = hf.load("asset:all-MiniLM-L6-v2", head="classification", num_labels=2)
tx, _ = optim.make_optimizer(config_lib.OptimConfig(), params, total_steps=100, num_layers=6)
state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
step = jax.jit(steps.make_train_step(steps.CLASSIFICATION), donate_argnums=0)
loaded = time.time() - start
marks = []
for L in lengths:
    ids = np.full((32, L), 1000, np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
             "labels": np.zeros(32, np.int32), "example_weight": np.ones(32, np.float32)}
    state, m = step(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    marks.append(time.time() - start)
print(json.dumps({"imports_and_load_s": loaded, "first_step_done_s": marks}))
"""


def run(lengths: str, cache: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, repr(time.time()), lengths, cache],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(cache: str, workdir: Path) -> dict:
    import yaml

    root = Path(__file__).resolve().parent.parent
    raw = yaml.safe_load((root / "configs" / "demo_finetune.yaml").read_text())
    raw["data"].update(validation_fraction=0.0, test_fraction=0.0)
    raw["train"].update(max_steps=1, progress=False, tensorboard=False, export_best=False)
    config = workdir.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, JAXTL_COMPILATION_CACHE=cache)
    start = time.time()
    subprocess.run([sys.executable, "-m", "jaxtl.cli", "finetune", "--config", str(config),
                    "--workdir", str(workdir)], check=True, env=env, capture_output=True, text=True)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    compiled = next(r for r in lines if r["split"] == "compile")
    return {"first_step_s": compiled["first_step_s"], "process_s": time.time() - start}


def main_cli(args) -> None:
    record = {"command": "python " + " ".join(sys.argv), "load_avg_start": os.getloadavg(),
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "mode": "cli"}
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "xla")
        for name, folder in (("no_cache", "off"), ("cold_cache", cache), ("warm_cache", cache)):
            record[name] = r = run_cli(folder, Path(tmp) / name)
            print(f"{name:<11} first step done {r['first_step_s']:.1f}s after process start "
                  f"(process {r['process_s']:.1f}s)", flush=True)
    record["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + [record], indent=2) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="16,32,48,64")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_cache.json"))
    p.add_argument("--cli", action="store_true", help="time the real `jaxtl finetune` demo start-up")
    args = p.parse_args()
    if args.cli:
        return main_cli(args)
    record = {"command": "python " + " ".join(sys.argv), "load_avg_start": os.getloadavg(),
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as cache:
        for name, folder in (("no_cache", "-"), ("cold_cache", cache), ("warm_cache", cache)):
            record[name] = run(args.lengths, folder)
            r = record[name]
            print(f"{name:<11} load {r['imports_and_load_s']:.1f}s, first steps done at "
                  + ", ".join(f"{t:.1f}s" for t in r["first_step_done_s"]), flush=True)
    record["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + [record], indent=2) + "\n")


if __name__ == "__main__":
    main()
