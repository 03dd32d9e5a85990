"""Fine-tuning throughput and time-to-accuracy: jaxtl vs a plain HF PyTorch loop, side by side.

Same model (all-MiniLM-L6-v2 + a new classification head), same data (the demo's movie-review
sentences and held-out split), same batch size, optimizer (AdamW, linear warmup/decay, clip 1.0)
and machine, in one process run:

* throughput (examples/s) with the classic pad-to-512 and with dynamic padding — jaxtl buckets
  lengths to a few shapes; the PyTorch loop pads each batch to its longest example (HF's
  DataCollatorWithPadding), the usual dynamic padding there;
* time to reach ``--target`` validation accuracy with dynamic padding (training time only; the
  evaluations are not counted). Pad-to-512 time-to-accuracy = the same number of steps (the math
  is identical) x the measured pad-to-512 step time, reported as such.

    python bench/bench_finetune.py                 # full: ~30-40 min on 2 CPU cores
    python bench/bench_finetune.py --quick         # throughput only, fewer steps
    python bench/bench_finetune.py --packing       # jaxtl with data.packing: true
    python bench/bench_finetune.py --padded-tokens # no training: tokens per step, packed vs not

Prints a table and writes bench/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def jaxtl_setup(args, max_len, buckets):
    import jax

    from jaxtl import config as config_lib, hf, optim, sharding, steps, tasks, train

    cfg = config_lib.load(Path(__file__).parent.parent / "configs" / "demo_finetune.yaml", [
        f"data.max_seq_length={max_len}", f"data.bucket_sizes={buckets}",
        f"train.batch_size={args.batch_size}", f"optim.lr={args.lr}", "mesh.data=1",
        f"data.packing={str(args.packing).lower()}",
    ])
    setup = tasks.finetune_setup(cfg)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    rules = sharding.rules_from_config(cfg.mesh)
    total = args.steps_to_accuracy
    tx, _ = optim.make_optimizer(cfg.optim, hf.abstract_params(setup.model), total_steps=total,
                                 num_layers=setup.model.config.num_hidden_layers)
    state, shardings = sharding.create_train_state(setup.model, tx, mesh, rules,
                                                   rng=jax.random.key(0), pretrained=setup.pretrained)
    step = sharding.compile_step(steps.make_train_step(setup.task), mesh, rules, shardings)
    eval_step = sharding.compile_step(steps.make_eval_step(setup.task), mesh, rules, shardings, train=False)
    return setup, mesh, state, step, eval_step


def jaxtl_throughput(args, max_len, buckets) -> dict:
    import jax

    from jaxtl import sharding

    setup, mesh, state, step, _ = jaxtl_setup(args, max_len, buckets)
    rng = jax.random.key(0)
    batches = [setup.train_batch(i) for i in range(args.steps)]
    for b in batches:  # compiles every shape that occurs (and trains; fine for timing)
        state, m = step(state, sharding.global_batch(b, mesh), rng)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for b in batches:
        state, m = step(state, sharding.global_batch(b, mesh), rng)
    jax.block_until_ready(m)
    elapsed = time.perf_counter() - start
    examples = sum(int(b["example_weight"].sum()) for b in batches)
    return {"examples_per_s": examples / elapsed, "step_s": elapsed / len(batches),
            "shapes": sorted({b["input_ids"].shape for b in batches})}


def padded_tokens(args) -> dict:
    """Tokens computed per step over one epoch of the demo's training batches (rows x padded
    length), unpacked (bucketed) vs packed: no model, no training."""
    from jaxtl import config as config_lib, hf
    from jaxtl.data import classification as C
    from jaxtl.data.batching import ClassificationBatcher

    cfg = config_lib.load(Path(__file__).parent.parent / "configs" / "demo_finetune.yaml",
                          [f"train.batch_size={args.batch_size}", *args.set])
    data = C.load_classification_data(cfg.data, hf.tokenizer(cfg.model.pretrained), max_positions=512)
    result = {"overrides": args.set}
    for packing in (False, True):
        batcher = ClassificationBatcher(data.train, batch_size=args.batch_size, seed=cfg.train.seed,
                                        bucket_sizes=cfg.data.bucket_sizes, packing=packing)
        computed = real = 0
        shapes = set()
        for step in range(batcher.steps_per_epoch):
            batch = batcher.train_batch(step)
            computed += batch["input_ids"].size
            real += int((batch["segment_ids"] > 0).sum() if packing else batch["attention_mask"].sum())
            shapes.add(batch["input_ids"].shape)
        result["packed" if packing else "unpacked"] = {
            "tokens_per_step": computed / batcher.steps_per_epoch,
            "real_fraction": real / computed, "shapes": sorted(shapes),
            "steps": batcher.steps_per_epoch, "slots": batcher.slots if packing else None}
    result["packed_over_unpacked"] = (result["packed"]["tokens_per_step"]
                                      / result["unpacked"]["tokens_per_step"])
    return result


def jaxtl_time_to_accuracy(args) -> dict:
    import jax

    from jaxtl import sharding, train

    setup, mesh, state, step, eval_step = jaxtl_setup(args, 64, "[16,32,48,64]")
    rng = jax.random.key(0)
    validation = setup.eval_sets[0]
    trained, curve = 0.0, []
    for i in range(args.steps_to_accuracy):
        batch = setup.train_batch(i)
        start = time.perf_counter()
        state, m = step(state, sharding.global_batch(batch, mesh), rng)
        jax.block_until_ready(m)
        trained += time.perf_counter() - start
        if (i + 1) % args.eval_every == 0:
            acc = train.evaluate(validation, state, eval_step, mesh)["accuracy"]
            curve.append({"step": i + 1, "train_s": trained, "accuracy": acc})
            print(f"  jaxtl step {i + 1}: {trained:.0f}s trained, val acc {acc:.4f}", flush=True)
            if acc >= args.target:
                break
    return {"curve": curve}


def torch_data(args, max_len, pad_to_max):
    """The same examples, split and order as jaxtl's data pipeline, as torch batches."""
    import torch

    from jaxtl import config as config_lib, hf
    from jaxtl.data import classification as C

    cfg = config_lib.load(Path(__file__).parent.parent / "configs" / "demo_finetune.yaml",
                          [f"data.max_seq_length={max_len}"])
    tok = hf.tokenizer(cfg.model.pretrained)
    data = C.load_classification_data(cfg.data, tok, max_positions=512)

    def batches(split, seed, count, shuffle=True):
        order = np.random.default_rng(seed).permutation(len(split)) if shuffle else np.arange(len(split))
        for start in range(0, count * args.batch_size, args.batch_size):
            idx = order[start % len(split):][: args.batch_size]
            rows = [split.input_ids[i] for i in idx]
            width = max_len if pad_to_max else max(len(r) for r in rows)
            ids = np.zeros((len(rows), width), np.int64)
            mask = np.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, : len(r)], mask[j, : len(r)] = r, 1
            yield {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                   "token_type_ids": torch.zeros_like(torch.from_numpy(ids)),
                   "labels": torch.from_numpy(split.labels[idx].astype(np.int64))}

    return data, batches


def torch_model(args, total_steps):
    import torch
    import transformers

    from jaxtl import hf

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(hf.resolve("asset:all-MiniLM-L6-v2")), num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, eps=1e-6)
    sched = transformers.get_linear_schedule_with_warmup(opt, int(0.1 * total_steps), total_steps)
    return model, opt, sched


def torch_step(model, opt, sched, batch):
    import torch

    model.train()
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss


def torch_throughput(args, max_len, pad_to_max) -> dict:
    data, batches = torch_data(args, max_len, pad_to_max)
    model, opt, sched = torch_model(args, args.steps_to_accuracy)
    listed = list(batches(data.train, 0, args.steps))
    for b in listed[:2]:
        torch_step(model, opt, sched, b)
    start = time.perf_counter()
    for b in listed:
        torch_step(model, opt, sched, b)
    elapsed = time.perf_counter() - start
    return {"examples_per_s": len(listed) * args.batch_size / elapsed, "step_s": elapsed / len(listed)}


def torch_time_to_accuracy(args) -> dict:
    import torch

    data, batches = torch_data(args, 64, pad_to_max=False)
    model, opt, sched = torch_model(args, args.steps_to_accuracy)
    trained, curve = 0.0, []
    for i, b in enumerate(batches(data.train, 0, args.steps_to_accuracy)):
        start = time.perf_counter()
        torch_step(model, opt, sched, b)
        trained += time.perf_counter() - start
        if (i + 1) % args.eval_every == 0:
            model.eval()
            correct = 0
            with torch.no_grad():
                for vb in batches(data.validation, 0, -(-len(data.validation) // args.batch_size), shuffle=False):
                    labels = vb.pop("labels")
                    correct += int((model(**vb).logits.argmax(-1) == labels).sum())
            acc = correct / len(data.validation)
            curve.append({"step": i + 1, "train_s": trained, "accuracy": acc})
            print(f"  torch step {i + 1}: {trained:.0f}s trained, val acc {acc:.4f}", flush=True)
            if acc >= args.target:
                break
    return {"curve": curve}


def first_reaching(curve, target):
    for point in curve:
        if point["accuracy"] >= target:
            return point
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=12, help="timed steps per throughput measurement")
    p.add_argument("--steps-to-accuracy", type=int, default=264, help="step budget (one epoch)")
    p.add_argument("--eval-every", type=int, default=33)
    p.add_argument("--target", type=float, default=0.80)
    p.add_argument("--quick", action="store_true", help="throughput only")
    p.add_argument("--packing", action="store_true", help="jaxtl runs with data.packing: true")
    p.add_argument("--padded-tokens", action="store_true",
                   help="only count tokens per step of one demo epoch, packed vs unpacked")
    p.add_argument("--set", action="append", default=[],
                   help="with --padded-tokens: a demo config override, e.g. data.max_seq_length=128")
    args = p.parse_args()
    if args.padded_tokens:
        result = padded_tokens(args)
        for name in ("unpacked", "packed"):
            r = result[name]
            print(f"{name:<9} {r['tokens_per_step']:8.1f} tokens/step, {r['real_fraction']:.1%} real, "
                  f"{len(r['shapes'])} shapes {r['shapes']}")
        print(f"packed / unpacked tokens per step: {result['packed_over_unpacked']:.3f}")
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / "finetune_packing_tokens.json").write_text(json.dumps(result, indent=2) + "\n")
        return

    import torch

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    results = {"machine": f"{platform.processor() or platform.machine()}, {threads} cores",
               "batch_size": args.batch_size}
    print(f"throughput, batch {args.batch_size}, {args.steps} timed steps each", flush=True)
    results["jaxtl_pad512"] = jaxtl_throughput(args, 512, "[512]")
    results["torch_pad512"] = torch_throughput(args, 512, pad_to_max=True)
    results["jaxtl_dynamic"] = jaxtl_throughput(args, 64, "[16,32,48,64]")
    results["torch_dynamic"] = torch_throughput(args, 64, pad_to_max=False)
    rows = [("pad to 512", "pad512"), ("dynamic", "dynamic")]
    print(f"{'padding':<12}{'jaxtl ex/s':>12}{'torch ex/s':>12}{'jaxtl/torch':>13}")
    for name, key in rows:
        j, t = results[f"jaxtl_{key}"]["examples_per_s"], results[f"torch_{key}"]["examples_per_s"]
        results[f"ratio_{key}"] = j / t
        print(f"{name:<12}{j:>12.1f}{t:>12.1f}{j / t:>13.2f}")
    results["jaxtl_dynamic_vs_torch_pad512"] = (
        results["jaxtl_dynamic"]["examples_per_s"] / results["torch_pad512"]["examples_per_s"])
    print(f"jaxtl dynamic vs the seed's torch pad-to-512: {results['jaxtl_dynamic_vs_torch_pad512']:.1f}x")

    if not args.quick:
        print(f"time to {args.target:.0%} validation accuracy (dynamic padding)", flush=True)
        results["jaxtl_tta"] = jaxtl_time_to_accuracy(args)
        results["torch_tta"] = torch_time_to_accuracy(args)
        for name in ("jaxtl", "torch"):
            hit = first_reaching(results[f"{name}_tta"]["curve"], args.target)
            results[f"{name}_time_to_target_s"] = hit and hit["train_s"]
            results[f"{name}_steps_to_target"] = hit and hit["step"]
            if hit:
                pad_s = hit["step"] * results[f"{name}_pad512"]["step_s"]
                results[f"{name}_pad512_time_to_target_s_estimated"] = pad_s
                print(f"{name}: {hit['train_s']:.0f}s ({hit['step']} steps) dynamic; "
                      f"pad-to-512 would need ~{pad_s:.0f}s")
            else:
                print(f"{name}: did not reach {args.target:.0%} within {args.steps_to_accuracy} steps")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "finetune.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
