"""Is the input pipeline ever the bottleneck? Train steps fed by the real data path vs the same
batches already on the device, alternating, in one process (issue 12, target 6).

The demo (all-MiniLM-L6-v2 + a classification head, the movie-review sentences, batch 32, the
demo's length buckets) through jaxtl's own pieces, as ``jaxtl finetune`` runs them:

* **real**: each step calls the recipe's ``setup.train_batch(step)`` (epoch plan, tokenized rows,
  padding to the bucket), ``sharding.global_batch`` (host -> device), then the jitted step; the
  loop does not wait for the device between steps (JAX dispatches asynchronously, so the next
  batch is built on the host while the device computes the current step — jaxtl's prefetch);
* **fixed**: the very same batches (same shapes, same order, so the same compute), built and put
  on the device before the clock starts.

Blocks of ``--steps`` steps alternate real / fixed for ``--rounds`` rounds (order rotated); the
medians give the ratio. Also reports the host time to build one batch alone.

    python bench/bench_input_pipeline.py                    # 3 rounds x 8 steps
    python bench/bench_input_pipeline.py --rounds 5 --steps 16

Appends to bench/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "input_pipeline.json"))
    args = p.parse_args()

    import jax

    from jaxtl import config as config_lib, hf, optim, sharding, steps, tasks

    record = {"command": "python bench/bench_input_pipeline.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "load_avg_start": os.getloadavg(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cfg = config_lib.load(Path(__file__).parent.parent / "configs" / "demo_finetune.yaml",
                          [f"train.batch_size={args.batch_size}", "mesh.data=1"])
    setup = tasks.finetune_setup(cfg)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    rules = sharding.rules_from_config(cfg.mesh)
    tx, _ = optim.make_optimizer(cfg.optim, hf.abstract_params(setup.model), total_steps=1000,
                                 num_layers=setup.model.config.num_hidden_layers)
    state, shardings = sharding.create_train_state(setup.model, tx, mesh, rules,
                                                   rng=jax.random.key(0), pretrained=setup.pretrained)
    train_step = sharding.compile_step(steps.make_train_step(setup.task), mesh, rules, shardings)
    rng = jax.random.key(0)

    n = args.rounds * args.steps
    t0 = time.perf_counter()
    host_batches = [setup.train_batch(i) for i in range(n)]
    build_ms = 1000 * (time.perf_counter() - t0) / n
    device_batches = [sharding.global_batch(b, mesh) for b in host_batches]
    shapes = sorted({b["input_ids"].shape for b in host_batches})
    for b in device_batches[: len(shapes) * 4]:  # compile every shape before timing (cache warm)
        state, m = train_step(state, b, rng)
    for shape in shapes:  # make sure each shape is compiled
        b = next(d for h, d in zip(host_batches, device_batches) if h["input_ids"].shape == shape)
        state, m = train_step(state, b, rng)
    jax.block_until_ready(m)

    def block(kind: str, start: int) -> float:
        nonlocal state
        t = time.perf_counter()
        for i in range(start, start + args.steps):
            if kind == "real":
                batch = sharding.global_batch(setup.train_batch(i), mesh)
            else:
                batch = device_batches[i]
            state, metrics = train_step(state, batch, rng)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - t) / args.steps

    times = {"real": [], "fixed": []}
    for r in range(args.rounds):
        order = ("real", "fixed") if r % 2 == 0 else ("fixed", "real")
        for kind in order:
            times[kind].append(block(kind, r * args.steps))
        print(f"round {r}: real {times['real'][-1]:.3f} s/step, fixed {times['fixed'][-1]:.3f} s/step",
              flush=True)
    real, fixed = statistics.median(times["real"]), statistics.median(times["fixed"])
    record.update(rounds=times, real_step_s=real, fixed_step_s=fixed, real_over_fixed=real / fixed,
                  host_batch_build_ms=build_ms, shapes=[list(s) for s in shapes],
                  load_avg_end=os.getloadavg())
    print(f"real data {real:.3f} s/step, fixed batches {fixed:.3f} s/step: real/fixed = "
          f"{real / fixed:.3f} (target <= 1.05); building one batch on the host: {build_ms:.1f} ms")
    out = Path(args.out)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + [record], indent=2) + "\n")


if __name__ == "__main__":
    main()
