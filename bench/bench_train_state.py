"""Time ``sharding.create_train_state`` for the demo's start: all-MiniLM-L6-v2 with a new 2-class
head, its pretrained weights placed, cold (an empty compilation cache) then warm (the cache that
run filled), each in a fresh process as the CLI would start.

    python bench/bench_train_state.py --runs 2     # at any commit: the before/after of RESULTS §13b

Prints one line per run; writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(cache: str) -> float:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from jaxtl import hf, optim, sharding
    from jaxtl.config import MeshConfig, OptimConfig

    folder = hf.resolve("asset:all-MiniLM-L6-v2")
    config = dataclasses.replace(hf.load_config(folder), labels=("neg", "pos"))
    model = hf.family_of(folder).build(config, "classification")
    pretrained = hf.pretrained_weights(folder, model)
    tx, _ = optim.make_optimizer(OptimConfig(lr=1e-4), sharding.abstract_params(model),
                                 total_steps=100, num_layers=config.num_hidden_layers)
    mesh = sharding.make_mesh(MeshConfig(), devices=jax.devices())
    start = time.perf_counter()
    state, _ = sharding.create_train_state(model, tx, mesh, sharding.DEFAULT_RULES,
                                           rng=jax.random.key(0), pretrained=pretrained)
    jax.block_until_ready(state)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="warm runs after the cold one")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(f"{one(args.child):.3f}")
        return
    with tempfile.TemporaryDirectory() as cache:
        for label in ["cold"] + ["warm"] * args.runs:
            out = subprocess.run([sys.executable, __file__, "--child", cache], check=True,
                                 capture_output=True, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            print(f"create_train_state {label}: {float(out.stdout.split()[-1]):.2f} s", flush=True)


if __name__ == "__main__":
    main()
