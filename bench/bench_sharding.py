"""Step time and per-device memory of a BERT train step under each device mesh.

For each mesh data x fsdp x tensor the real jaxtl train step (``sharding.create_train_state`` +
``sharding.compile_step``: AdamW, clipping, shardings in and out, state donated) is compiled and
timed. Memory per device comes from XLA's own accounting of the compiled program
(``compiled.memory_analysis()``): arguments (the train state shard + the batch shard), outputs
(the new state, aliased onto the donated arguments), and temporaries (activations kept for the
backward pass, gradients, collectives' buffers). "state" is what one device holds of the
parameters and Adam moments, summed from the arrays' shard shapes. The program is compiled from
shapes alone, so ``--memory-only`` answers "does it fit?" for any size without the memory.

    python bench/bench_sharding.py                      # BERT-base, seq 128, global batch 16
    python bench/bench_sharding.py --size mini --steps 5
    python bench/bench_sharding.py --meshes 8x1x1,1x8x1 --dtype bfloat16 --remat
    python bench/bench_sharding.py --task pretraining --json bench/results/sharding.json
    python bench/bench_sharding.py --size large --batch 256 --memory-only   # would it fit?

On a machine with GPUs or TPUs it uses them (all of them, or ``--devices N`` of them); on CPU it
fakes ``--devices`` (default 8) CPU devices, which share the machine's cores, so CPU step times
compare meshes' overheads, not real speedups. The memory columns are what each device would need
on real hardware. Meshes whose tensor axis does not divide the heads/MLP, or whose data x fsdp
does not divide the batch, are skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

MiB = 2**20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="base", help="BERT preset: tiny, mini, small, medium, base, large")
    p.add_argument("--task", choices=["classification", "pretraining"], default="classification")
    p.add_argument("--batch", type=int, default=16, help="global batch size")
    p.add_argument("--seq", type=int, default=128, help="sequence length")
    p.add_argument("--masked", type=int, default=20, help="masked positions per row (pretraining)")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    p.add_argument("--remat", action="store_true", help="recompute encoder layers in the backward pass")
    p.add_argument("--steps", type=int, default=3, help="timed steps per mesh (after one warm-up step)")
    p.add_argument("--devices", type=int, default=None,
                   help="devices to use; on CPU, how many to fake (default 8)")
    p.add_argument("--meshes", default=None,
                   help="comma-separated DATAxFSDPxTENSOR list (default: a standard set for the device count)")
    p.add_argument("--memory-only", action="store_true",
                   help="compile from shapes and report memory; allocate and time nothing (any model size)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def default_meshes(n: int) -> list[tuple[int, int, int]]:
    """One device, then pure data / FSDP / tensor parallelism and their 2-D/3-D mixes over n."""
    meshes = [(1, 1, 1), (n, 1, 1), (1, n, 1)]
    for t in (2, 4):
        if n % t == 0 and n // t > 1:
            meshes += [(n // t, 1, t), (1, n // t, t)]
            if (n // t) % 2 == 0 and n // t > 2:
                meshes.append((2, n // t // 2, t))
    if n % 4 == 0:
        meshes.append((2, n // 2, 1))
    meshes.append((1, 1, n))
    return list(dict.fromkeys(m for m in meshes if m[0] * m[1] * m[2] in (1, n)))


def ensure_devices(args) -> None:
    """Fake CPU devices before JAX starts when there is no accelerator (re-executing if needed)."""
    flag = "--xla_force_host_platform_device_count"
    if os.environ.get("JAXTL_BENCH_FAKED"):
        return
    import jax

    if jax.default_backend() != "cpu":
        return
    want = args.devices or 8
    if jax.device_count() == want:
        return
    env = dict(os.environ, JAXTL_BENCH_FAKED="1", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(flag))
    env["XLA_FLAGS"] += f" {flag}={want}"
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def make_batch(args, rng):
    import numpy as np

    B, L = args.batch, args.seq
    lengths = rng.integers(L // 2, L + 1, B)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    batch = {
        "input_ids": rng.integers(1000, args.vocab, (B, L)).astype(np.int32) * mask,
        "attention_mask": mask,
        "token_type_ids": np.zeros((B, L), np.int32),
        "example_weight": np.ones(B, np.float32),
    }
    if args.task == "classification":
        batch["labels"] = rng.integers(0, 2, B).astype(np.int32)
    else:
        P = args.masked
        batch["masked_positions"] = np.stack([rng.choice(np.arange(1, n), P, replace=False) for n in lengths]).astype(np.int32)
        batch["masked_labels"] = rng.integers(1000, args.vocab, (B, P)).astype(np.int32)
        batch["masked_weights"] = np.ones((B, P), np.float32)
        batch["nsp_labels"] = rng.integers(0, 2, B).astype(np.int32)
    return batch


def abstract_state(model, tx, mesh, rules):
    """The train state as shapes + shardings (what create_train_state would build), no memory."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax.training.train_state import TrainState

    from jaxtl import checkpoint, sharding

    with sharding.activate(mesh, rules):
        boxed = jax.eval_shape(sharding.model_init_fn(model), jax.random.key(0))
    params = nn.unbox(boxed)
    p_shardings = sharding.param_shardings(boxed, mesh, rules)
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), apply_fn=model.apply, params=params,
                       tx=tx, opt_state=jax.eval_shape(tx.init, params))
    shardings = state.replace(step=sharding.replicated(mesh), params=p_shardings,
                              opt_state=sharding.opt_state_shardings(tx, params, p_shardings, mesh))
    return checkpoint.abstract_with_shardings(state, shardings), shardings


def bytes_per_device(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded shapes (its shard of every array)."""
    import math

    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(abstract_tree))


def bench_mesh(args, shape, model, tx, batch_host) -> dict:
    import jax
    import numpy as np

    from jaxtl import sharding, steps
    from jaxtl.config import MeshConfig
    from jaxtl.errors import ConfigError

    data, fsdp, tensor = shape
    row = {"mesh": f"{data}x{fsdp}x{tensor}"}
    devices = jax.devices()[: data * fsdp * tensor]
    try:
        mesh = sharding.make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor), devices=devices)
        sharding.check_model_fits(mesh, model.config)
        sharding.check_batch_fits(mesh, args.batch)
    except ConfigError as e:
        return row | {"skipped": str(e)}
    rules = sharding.DEFAULT_RULES
    task = steps.CLASSIFICATION if args.task == "classification" else steps.PRETRAINING
    abstract, shardings = abstract_state(model, tx, mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                      for k, v in batch_host.items()}
    rng = jax.random.key(1)
    run = sharding.compile_step(steps.make_train_step(task), mesh, rules, shardings)
    start = time.perf_counter()
    with sharding.activate(mesh, rules):  # compiled from shapes: nothing allocated yet
        compiled = run.jitted.lower(abstract, abstract_batch, rng).compile()
    row["compile_s"] = time.perf_counter() - start
    row["state_mib"] = bytes_per_device(abstract) / MiB
    mem = compiled.memory_analysis()
    if mem is not None:
        row["args_mib"] = mem.argument_size_in_bytes / MiB
        row["out_mib"] = mem.output_size_in_bytes / MiB
        row["alias_mib"] = mem.alias_size_in_bytes / MiB
        row["temp_mib"] = mem.temp_size_in_bytes / MiB
        # Outputs aliased onto donated arguments need no memory of their own.
        row["total_mib"] = row["args_mib"] + row["out_mib"] - row["alias_mib"] + row["temp_mib"]
    if args.memory_only:
        return row
    state, _ = sharding.create_train_state(model, tx, mesh, rules, rng=jax.random.key(0))
    batch = sharding.global_batch(batch_host, mesh)
    state, metrics = compiled(state, batch, rng)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    row["step_s"] = float(np.median(times))
    row["examples_per_s"] = args.batch / row["step_s"]
    row["loss"] = steps.summarize(jax.device_get(metrics))["loss"]
    del state, compiled
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_devices(args)
    import jax
    import numpy as np

    from jaxtl import hf, optim
    from jaxtl.config import OptimConfig
    from jaxtl import families

    bert = families.get("bert")
    build, preset = bert.build, bert.preset

    n = jax.device_count() if args.devices is None else min(args.devices, jax.device_count())
    meshes = ([tuple(int(x) for x in m.split("x")) for m in args.meshes.split(",")]
              if args.meshes else default_meshes(n))
    config = preset(args.size, vocab_size=args.vocab, dtype=args.dtype, remat=args.remat,
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = build(config, "classification" if args.task == "classification" else "pretraining")
    tx, _ = optim.make_optimizer(OptimConfig(lr=1e-4), hf.abstract_params(model), total_steps=1000,
                                 num_layers=config.num_hidden_layers)
    batch = make_batch(args, np.random.default_rng(0))
    header = (f"BERT-{args.size} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
              f"{config.num_attention_heads} heads), {args.task}, global batch {args.batch} x seq "
              f"{args.seq}, {args.dtype} compute{', remat' if args.remat else ''}; "
              f"{n} {jax.devices()[0].platform.upper()} devices ({jax.devices()[0].device_kind}), "
              f"jax {jax.__version__}")
    print(header, flush=True)
    rows = []
    for shape in meshes:
        row = bench_mesh(args, shape, model, tx, batch)
        rows.append(row)
        print("  " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)

    print("\nper device, MiB: state = params + Adam moments held; args/out/temp/total from "
          "compiled.memory_analysis() (total = args + out - aliased + temp)")
    cols = [("mesh", "mesh d x f x t", "{}"), ("state_mib", "state", "{:.1f}"), ("args_mib", "args", "{:.1f}"),
            ("out_mib", "out", "{:.1f}"), ("temp_mib", "temp", "{:.1f}"), ("total_mib", "total", "{:.1f}"),
            ("compile_s", "compile s", "{:.1f}"), ("step_s", "step s", "{:.3f}"),
            ("examples_per_s", "ex/s", "{:.1f}")]
    print("| " + " | ".join(title for _, title, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        if "skipped" in row:
            print(f"| {row['mesh']} | skipped: {row['skipped']} |")
            continue
        print("| " + " | ".join(fmt.format(row[key]) if key in row else "-" for key, _, fmt in cols) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"setup": header, "args": vars(args), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
