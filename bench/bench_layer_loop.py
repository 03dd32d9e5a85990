"""How the encoder's layer loop is traced: jaxtl's unrolled layers vs two candidates that trace
one layer for all of them, measured on the demo's train step (all-MiniLM-L6-v2 + a new 2-class
head, batch 32, dropout on, AdamW), each variant in a fresh process per run, cold (empty
compilation cache) then warm (the cache that run filled), alternating variants per round.

* ``unrolled`` — what jaxtl ships: ``BertLayerCollection`` calls layers ``0 .. n-1`` in turn.
* ``scan`` — ``jax.lax.scan`` over the layers, their HF-layout parameters stacked at trace time
  (the layout on disk and in checkpoints unchanged): XLA sees one layer body in a while loop.
* ``nn_jit`` — each layer under flax's ``nn.jit`` (one nested jit per layer, cached by flax).

Both candidates draw other dropout masks than ``unrolled`` (their keys are derived otherwise), so
the losses differ slightly; the deterministic paths compute the same function.

    python bench/bench_layer_loop.py --rounds 2 --length 32     # RESULTS §14
    python bench/bench_layer_loop.py --rounds 2 --length 64 --steps 6 --variants unrolled,scan

Per run: seconds to trace the step, lower it to StableHLO, compile it (cold) or load it from the
cache (warm), run it the first time, and the median of ``--steps`` later steps. Writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("unrolled", "scan", "nn_jit")


def patch(variant: str) -> None:
    """Swap ``BertLayerCollection``'s loop for ``variant``'s (the parameter tree is unchanged)."""
    if variant == "unrolled":
        return
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxtl.families import bert

    class ScanLayers(bert.BertLayerCollection):
        @nn.compact
        def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
            c = self.config
            layer_cls = self.layer_cls or bert.BertLayer
            if self.is_initializing():  # create the HF-layout parameters 0 .. n-1
                for i in range(c.num_hidden_layers):
                    x_BxLxD = layer_cls(c, name=str(i))(x_BxLxD, mask_Bx1xLxL, deterministic)
                return x_BxLxD
            n = c.num_hidden_layers
            params = self.variables["params"]
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[str(i)] for i in range(n)])
            keys = (jnp.zeros((n,), jnp.uint32) if deterministic
                    else jax.random.split(self.make_rng("dropout"), n))
            layer = layer_cls(c, parent=None)

            def body(x, params_and_key):
                p, key = params_and_key
                rngs = None if deterministic else {"dropout": key}
                return layer.apply({"params": p}, x, mask_Bx1xLxL, deterministic, rngs=rngs), None

            x_BxLxD, _ = jax.lax.scan(body, x_BxLxD, (stacked, keys))
            return x_BxLxD

    class JitLayers(bert.BertLayerCollection):
        @nn.compact
        def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
            c = self.config
            layer_cls = nn.jit(self.layer_cls or bert.BertLayer, static_argnums=(3,))
            for i in range(c.num_hidden_layers):
                x_BxLxD = layer_cls(c, name=str(i))(x_BxLxD, mask_Bx1xLxL, deterministic)
            return x_BxLxD

    new = {"scan": ScanLayers, "nn_jit": JitLayers}[variant]
    new.__name__ = "BertLayerCollection"
    bert.BertLayerCollection = new


def child(variant: str, cache: str, length: int, timed_steps: int, donate: bool = False) -> dict:
    import dataclasses
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    patch(variant)
    from jaxtl import hf, optim, sharding, steps
    from jaxtl.config import MeshConfig, OptimConfig

    folder = hf.resolve("asset:all-MiniLM-L6-v2")
    config = dataclasses.replace(hf.load_config(folder), labels=("neg", "pos"))
    model = hf.family_of(folder).build(config, "classification")
    tx, _ = optim.make_optimizer(OptimConfig(lr=1e-4), sharding.abstract_params(model),
                                 total_steps=100, num_layers=config.num_hidden_layers)
    mesh = sharding.make_mesh(MeshConfig(), devices=jax.devices())
    state, shardings = sharding.create_train_state(
        model, tx, mesh, sharding.DEFAULT_RULES, rng=jax.random.key(0),
        pretrained=hf.pretrained_weights(folder, model))
    rows = np.random.default_rng(0)
    batch = {"input_ids": rows.integers(1000, 5000, (32, length)).astype(np.int32),
             "attention_mask": np.ones((32, length), np.int32),
             "token_type_ids": np.zeros((32, length), np.int32),
             "labels": rows.integers(0, 2, (32,)).astype(np.int32),
             "example_weight": np.ones((32,), np.float32)}
    batch = sharding.global_batch(batch, mesh)
    step = sharding.compile_step(steps.classification_train_step, mesh, sharding.DEFAULT_RULES,
                                 shardings, donate=donate)
    out, key = {}, jax.random.key(1)
    with sharding.activate(mesh, sharding.DEFAULT_RULES):
        t = time.perf_counter()
        traced = step.jitted.trace(state, batch, key)
        out["trace_s"] = time.perf_counter() - t
        t = time.perf_counter()
        lowered = traced.lower()
        out["lower_s"] = time.perf_counter() - t
        t = time.perf_counter()
        compiled = lowered.compile()
        out["compile_or_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    new_state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    out["first_run_s"] = time.perf_counter() - t
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(timed_steps):
        if donate:  # as the training loop: the state goes in, the next comes out in its buffers
            state = new_state
        t = time.perf_counter()
        new_state, m = compiled(state, batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    out["step_s"] = statistics.median(times)
    out["page_faults_per_step"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / timed_steps
    out["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["loss"] = float(metrics["loss_sum"] / metrics["count"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--length", type=int, default=32, help="sequence length of the batch")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the first (median)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--donate", action="store_true", help="donate the state, as the training loop")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.length, args.steps, args.donate)))
        return
    variants = args.variants.split(",")
    fields = ("trace_s", "lower_s", "compile_or_load_s", "first_run_s", "step_s")
    print(f"{'variant':<9} {'cache':<5} " + " ".join(f"{f[:-2]:>15}" for f in fields) + "     loss",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in variants:
                cache = os.path.join(tmp, f"{variant}-{r}")
                for label in ("cold", "warm"):
                    proc = subprocess.run(
                        [sys.executable, __file__, "--length", str(args.length),
                         "--steps", str(args.steps), *(["--donate"] if args.donate else []),
                         "--child", variant, cache],
                        check=True, capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})
                    rec = json.loads(proc.stdout.strip().splitlines()[-1])
                    print(f"{variant:<9} {label:<5} "
                          + " ".join(f"{rec[f]:>15.2f}" for f in fields) + f"  {rec['loss']:.5f}",
                          flush=True)


if __name__ == "__main__":
    main()
