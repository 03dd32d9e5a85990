"""BERT-base train steps on one accelerator: tokens/s, step time and MFU (vendor and measured peak).

Runs, for each sequence length, a fine-tuning step (classification head) and a pretraining step
(MLM at 15 % masked positions + NSP) of a random-init BERT-base in bf16 compute with fp32
parameters and AdamW (clip 1.0), with fused attention: ``jax.nn.dot_product_attention`` with
``implementation="cudnn"`` on GPU (cuDNN flash attention), XLA's elsewhere. Fused attention has
no dropout on the attention probabilities, so they are off here (``--attention-dropout 0``,
as most current BERT recipes on GPUs); hidden dropout stays 0.1.

MFU = analytic train-step FLOPs (jaxtl.flops: matmuls only, backward = 2 x forward) / step time
/ peak, against both the vendor's dense bf16 peak (jaxtl.flops.VENDOR_PEAK_BF16, by device kind)
and the FLOP/s of a large bf16 matmul measured in the same process.

    bench/accelerator.sh                     # on a GPU/TPU host: BERT-base, seq 128 and 512
    bench/accelerator.sh --smoke             # CPU smoke test: a 1-layer tiny model, seq 16

Writes bench/results/accelerator-<device>.json (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import time
from pathlib import Path

import numpy as np


def make_batch(task: str, batch: int, seq_len: int, masked: int, vocab: int, seed: int = 0) -> dict:
    """A fixed random batch with every key the step of ``task`` reads (no padding: a packed or
    pretraining-style batch, every position real)."""
    rng = np.random.default_rng(seed)
    shape = (batch, seq_len)
    data = {"input_ids": rng.integers(5, vocab, shape).astype(np.int32),
            "attention_mask": np.ones(shape, np.int32),
            "token_type_ids": (np.arange(seq_len)[None] >= seq_len // 2).repeat(batch, 0).astype(np.int32),
            "example_weight": np.ones(batch, np.float32)}
    if task == "classification":
        data["labels"] = rng.integers(0, 2, batch).astype(np.int32)
    else:
        positions = np.sort(rng.permuted(np.tile(np.arange(1, seq_len), (batch, 1)), axis=1)[:, :masked], axis=1)
        data.update(masked_positions=positions.astype(np.int32),
                    masked_labels=rng.integers(5, vocab, (batch, masked)).astype(np.int32),
                    masked_weights=np.ones((batch, masked), np.float32),
                    nsp_labels=rng.integers(0, 2, batch).astype(np.int32))
    return data


def use_attention_implementation(implementation: str | None):
    """Route the model's ``jax.nn.dot_product_attention`` calls to ``implementation``."""
    import jax

    original = getattr(jax.nn.dot_product_attention, "__wrapped__", jax.nn.dot_product_attention)
    if implementation is None:
        jax.nn.dot_product_attention = original
        return
    patched = functools.partial(original, implementation=implementation)
    patched.__wrapped__ = original
    jax.nn.dot_product_attention = patched


def measure(task: str, seq_len: int, args, peaks: dict) -> dict:
    import jax
    from flax.training.train_state import TrainState

    from jaxtl import config as config_lib, families, flops, hf, optim, steps

    bert = families.get("bert")

    layers = {"num_hidden_layers": args.layers} if args.layers else {}
    config = bert.preset(
        args.size, **layers, dtype=args.dtype, param_dtype="float32", vocab_size=args.vocab_size,
        attention_probs_dropout_prob=args.attention_dropout, max_position_embeddings=max(512, seq_len))
    head = "classification" if task == "finetune" else "pretraining"
    model = bert.build(config, head)
    masked = max(1, math.ceil(0.15 * seq_len)) if head == "pretraining" else None
    batch_size = args.batch_size or (args.batch_128 if seq_len <= 128 else args.batch_512)
    params = hf.init_params(model, jax.random.key(0))
    tx, _ = optim.make_optimizer(config_lib.OptimConfig(lr=1e-4, schedule="constant", warmup_steps=0),
                                 params, total_steps=1000, num_layers=config.num_hidden_layers)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    task_obj = steps.CLASSIFICATION if head == "classification" else steps.PRETRAINING
    step = jax.jit(steps.make_train_step(task_obj), donate_argnums=0)
    batch = jax.device_put(make_batch(head, batch_size, seq_len, masked, config.vocab_size))
    rng = jax.random.key(0)

    attention = args.attention
    start = time.perf_counter()
    try:
        use_attention_implementation(attention)
        compiled = step.lower(state, batch, rng).compile()
    except Exception as e:  # cuDNN refuses some shapes/dtypes: say so and measure XLA's instead
        if attention is None or attention == "xla":
            raise
        print(f"  attention implementation {attention!r} failed ({type(e).__name__}: "
              f"{str(e).splitlines()[0][:200]}); using XLA's", flush=True)
        attention = f"xla ({args.attention} failed)"
        use_attention_implementation("xla")
        compiled = step.lower(state, batch, rng).compile()
    finally:
        use_attention_implementation(None)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):  # no host sync inside the loop: steps queue up as in training
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / args.steps
    step_flops = flops.train_step_flops(config, batch_size, seq_len, head, masked_positions=masked)
    result = {
        "task": task, "model": args.size, "batch": [batch_size, seq_len], "masked_positions": masked,
        "dtype": args.dtype, "param_dtype": "float32", "attention": attention or "default",
        "compile_s": compile_s, "step_s": step_s, "tokens_per_s": batch_size * seq_len / step_s,
        "examples_per_s": batch_size / step_s, "train_step_tflops": step_flops / 1e12,
        "achieved_tflops_per_s": step_flops / step_s / 1e12,
        "mfu_vs_measured_matmul": flops.mfu(step_s, step_flops, peaks["measured_matmul"]),
        "loss_finite": bool(np.isfinite(float(metrics.get("loss_sum", metrics.get("mlm_loss_sum"))))),
    }
    if peaks["vendor"]:
        result["mfu_vs_vendor_peak"] = flops.mfu(step_s, step_flops, peaks["vendor"])
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model and shapes (CPU smoke test)")
    p.add_argument("--size", default="base", help="BERT preset: tiny ... large")
    p.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--seqs", default="128,512")
    p.add_argument("--tasks", default="finetune,pretrain")
    p.add_argument("--batch-size", type=int, default=None, help="one batch size for every length")
    p.add_argument("--batch-128", type=int, default=256, help="batch at seq <= 128")
    p.add_argument("--batch-512", type=int, default=64, help="batch at seq 512")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay fp32)")
    p.add_argument("--attention", default=None,
                   help="dot_product_attention implementation: cudnn (GPU default), xla, none=auto")
    p.add_argument("--attention-dropout", type=float, default=0.0)
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.smoke:
        # One layer, one length: compiling dominates a smoke run (each step compiles in seconds).
        args.size, args.layers, args.seqs, args.batch_size, args.vocab_size = "tiny", 1, "16", 2, 128
        args.steps, args.warmup = 2, 1

    import jax

    from jaxtl import flops

    device = jax.devices()[0]
    if args.attention is None and device.platform == "gpu":
        args.attention = "cudnn"
    if args.attention == "none":
        args.attention = None
    peak_dtype = args.dtype if device.platform != "cpu" else "float32"  # CPU bf16 is emulated
    peaks = {"measured_matmul": flops.measured_peak_flops(peak_dtype, 256 if args.smoke else None),
             "measured_matmul_dtype": peak_dtype,
             "vendor": flops.vendor_peak_flops(device)}
    print(f"{device.device_kind} ({device.platform}): measured {peak_dtype} matmul "
          f"{peaks['measured_matmul'] / 1e12:.2f} TFLOP/s, vendor bf16 peak "
          f"{peaks['vendor'] / 1e12 if peaks['vendor'] else float('nan'):.0f} TFLOP/s", flush=True)
    results = []
    for seq_len in map(int, args.seqs.split(",")):
        for task in args.tasks.split(","):
            r = measure(task, seq_len, args, peaks)
            results.append(r)
            vendor = f", MFU {r['mfu_vs_vendor_peak']:.1%} of vendor peak" if "mfu_vs_vendor_peak" in r else ""
            print(f"{task:<9} {args.size} {r['batch'][0]}x{seq_len}: {r['step_s'] * 1e3:.1f} ms/step, "
                  f"{r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu_vs_measured_matmul']:.1%} of measured "
                  f"matmul{vendor} (compile {r['compile_s']:.1f}s)", flush=True)
    name = re.sub(r"[^A-Za-z0-9]+", "-", device.device_kind).strip("-").lower()
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"accelerator-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": "bench/accelerator.sh " + " ".join(os.sys.argv[1:]), "device": device.device_kind,
              "platform": device.platform, "host": platform.platform(), "jax": jax.__version__,
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "peaks_flops": peaks, "results": results}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
