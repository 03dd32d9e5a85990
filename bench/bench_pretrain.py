"""Pretraining throughput: jaxtl's jitted MLM+NSP train step vs Hugging Face PyTorch, side by side.

Same architecture (a BERT size preset, vocab 30522 as the MiniLM/bert-base-uncased tokenizer),
same batches ([B, L] real Shakespeare pairs with 15% masking, from jaxtl's pretraining data), same
optimizer (AdamW, weight decay 0.01 off biases/LayerNorm, global-norm clip 1.0), fp32, dropout on,
same machine and process. Three contenders, measured in alternation (one timed block of each per
repeat, after warm-up steps), median step time over the repeats:

* ``jaxtl gather``: jaxtl as it trains — the MLM decoder (hidden -> 30522) runs only at the
  ``P = ceil(0.15 L) + 1`` masked positions of each row (as the original BERT code does);
* ``jaxtl full``: the same step with ``masked_positions`` = every position, so the decoder runs
  on all B x L tokens (the loss is identical: non-masked positions weigh 0) — HF's amount of work;
* ``torch``: ``transformers.BertForPreTraining`` with ``labels`` -100 off the masked positions
  (HF computes the decoder over all positions), ``torch.set_num_threads(cores)``.

    python bench/bench_pretrain.py                      # mini, L=128, B=32: a few minutes here
    python bench/bench_pretrain.py --size small --batch-size 16 --repeats 3

Prints a table (tokens/s = B x L / step time) and writes bench/results/pretrain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_batches(args) -> tuple[list[dict], int]:
    """``args.num_batches`` training batches of real text (the first 120 Shakespeare scenes)."""
    from jaxtl import assets, hf
    from jaxtl.config import PretrainDataConfig
    from jaxtl.data import pretraining as pt
    from jaxtl.data.batching import PretrainingBatcher

    text = Path(assets.resolve("asset:shakespeare")).read_text(encoding="utf-8")
    scenes = text.split("\n\n")[:120]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n\n".join(scenes), encoding="utf-8")
        cfg = PretrainDataConfig(train_files=[str(corpus)], max_seq_length=args.seq_len,
                                 validation_fraction=0.0)
        tokenizer = hf.tokenizer("asset:all-MiniLM-L6-v2")
        data, _ = pt.load_pretraining_data(cfg, tokenizer, model_vocab_size=len(tokenizer))
    batcher = PretrainingBatcher(data, batch_size=args.batch_size, seed=0)
    batches = [batcher.train_batch(i) for i in range(args.num_batches)]
    return batches, len(tokenizer)


def full_length(batch: dict) -> dict:
    """The same batch with every position a prediction slot (weight 0 where nothing is masked)."""
    B, L = batch["input_ids"].shape
    positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()
    labels = np.zeros((B, L), np.int32)
    weights = np.zeros((B, L), np.float32)
    rows, slots = np.nonzero(batch["masked_weights"])
    cols = batch["masked_positions"][rows, slots]
    labels[rows, cols] = batch["masked_labels"][rows, slots]
    weights[rows, cols] = 1.0
    return {**batch, "masked_positions": positions, "masked_labels": labels, "masked_weights": weights}


def jaxtl_runner(args, vocab_size: int):
    import jax

    from jaxtl import hf, optim, sharding, steps
    from jaxtl.config import MeshConfig, OptimConfig
    from jaxtl import families

    bert = families.get("bert")
    build, preset = bert.build, bert.preset

    config = preset(args.size, vocab_size=vocab_size)
    model = build(config, "pretraining")
    mesh_cfg = MeshConfig(data=1)
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:1])
    rules = sharding.rules_from_config(mesh_cfg)
    opt_cfg = OptimConfig(name="adamw", lr=1e-4, warmup_steps=10, weight_decay=0.01, max_grad_norm=1.0)
    tx, _ = optim.make_optimizer(opt_cfg, hf.abstract_params(model), total_steps=10_000,
                                 num_layers=config.num_hidden_layers)
    state, shardings = sharding.create_train_state(model, tx, mesh, rules, rng=jax.random.key(0))
    step = sharding.compile_step(steps.make_train_step(steps.PRETRAINING), mesh, rules, shardings)
    rng = jax.random.key(0)
    holder = {"state": state}

    def run(batches):
        state, metrics = holder["state"], None
        for batch in batches:
            state, metrics = step(state, sharding.global_batch(batch, mesh), rng)
        jax.block_until_ready(metrics)
        holder["state"] = state
        return float(metrics["mlm_loss_sum"] / metrics["mlm_count"])

    return run, config


def torch_runner(config, batches_np):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(**config.to_hf())).train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))

    def to_torch(batch):
        labels = np.full(batch["input_ids"].shape, -100, np.int64)
        rows, slots = np.nonzero(batch["masked_weights"])
        labels[rows, batch["masked_positions"][rows, slots]] = batch["masked_labels"][rows, slots]
        return {"input_ids": torch.from_numpy(batch["input_ids"].astype(np.int64)),
                "attention_mask": torch.from_numpy(batch["attention_mask"].astype(np.int64)),
                "token_type_ids": torch.from_numpy(batch["token_type_ids"].astype(np.int64)),
                "labels": torch.from_numpy(labels),
                "next_sentence_label": torch.from_numpy(batch["nsp_labels"].astype(np.int64))}

    cache = {id(b): to_torch(b) for b in batches_np}

    def run(batches):
        loss = None
        for batch in batches:
            out = model(**cache[id(batch)])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss = out.loss.detach()
        return float(loss)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="mini", help="BERT preset name (jaxtl.families.bert.PRESETS) (default: mini)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pretrain.json"))
    args = parser.parse_args()
    args.num_batches = args.steps

    import jax
    import torch

    torch.set_num_threads(args.threads)
    batches, vocab_size = make_batches(args)
    full_batches = [full_length(b) for b in batches]
    gather_run, config = jaxtl_runner(args, vocab_size)
    full_run, _ = jaxtl_runner(args, vocab_size)
    torch_run = torch_runner(config, batches)
    contenders = {
        "jaxtl gather": (gather_run, batches),
        "jaxtl full": (full_run, full_batches),
        "torch": (torch_run, batches),
    }
    B, L = batches[0]["input_ids"].shape
    P = batches[0]["masked_positions"].shape[1]
    print(f"{args.size}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab "
          f"{config.vocab_size}; batch [{B}, {L}], {P} prediction slots per row; fp32; "
          f"{args.threads} threads; jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}",
          flush=True)
    for name, (run, data) in contenders.items():  # compile / warm up
        start = time.perf_counter()
        for _ in range(args.warmup):
            run(data[:1])
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f}s", flush=True)

    times: dict[str, list[float]] = {name: [] for name in contenders}
    losses: dict[str, float] = {}
    for r in range(args.repeats):
        for name, (run, data) in contenders.items():
            start = time.perf_counter()
            losses[name] = run(data)
            times[name].append((time.perf_counter() - start) / len(data))
        print(f"  repeat {r + 1}/{args.repeats}: " + ", ".join(
            f"{name} {times[name][-1] * 1000:.0f} ms" for name in contenders), flush=True)

    results = {}
    for name in contenders:
        step_s = statistics.median(times[name])
        results[name] = {"step_s": step_s, "tokens_per_s": B * L / step_s,
                         "step_s_all": times[name], "last_mlm_loss": losses[name]}
    torch_tps = results["torch"]["tokens_per_s"]
    print(f"\n{'':14s} {'ms/step':>9s} {'tokens/s':>10s} {'vs torch':>9s}")
    for name, res in results.items():
        print(f"{name:14s} {res['step_s'] * 1000:9.0f} {res['tokens_per_s']:10.0f} "
              f"{res['tokens_per_s'] / torch_tps:8.2f}x")
    record = {"args": vars(args), "batch": [int(B), int(L)], "prediction_slots": int(P),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_at_end": os.getloadavg()},
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
