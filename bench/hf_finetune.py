"""The HF PyTorch side of bench/bench_e2e.py: the usual fine-tuning script, run as its own process.

What a user of transformers writes: ``AutoTokenizer`` + ``AutoModelForSequenceClassification``,
``DataCollatorWithPadding`` (each batch padded to its longest example), a shuffled
``DataLoader``, AdamW with linear warmup/decay, gradient clipping at 1.0, evaluation on the
validation split every ``--eval-every`` steps, the test split at the end, ``save_pretrained``.
It imports neither jaxtl nor JAX, so its start-up is its own. Every evaluation is logged with
``wall_s``, seconds since this process started (from /proc, as jaxtl's ``metrics.jsonl``).

    python bench/hf_finetune.py --data DIR --model FOLDER --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def process_start_time() -> float:
    """As jaxtl.runlog.process_start_time (boot = now - /proc/uptime; not the whole-second btime)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


STARTED = process_start_time()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with train.csv, validation.csv, test.csv")
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=33)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="save_pretrained here at the end")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import csv

    import torch
    import transformers

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count())
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)

    def load(split):
        with open(Path(args.data) / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        labels = sorted({r["label"] for r in rows}) if split == "train" else None
        enc = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=args.max_length)
        return rows, enc, labels

    train_rows, train_enc, names = load("train")
    label_id = {name: i for i, name in enumerate(names)}

    def dataset(rows, enc):
        return [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                 "attention_mask": enc["attention_mask"][i], "labels": label_id[rows[i]["label"]]}
                for i in range(len(rows))]

    train = dataset(train_rows, train_enc)
    validation = dataset(*load("validation")[:2])
    test = dataset(*load("test")[:2])
    collate = transformers.DataCollatorWithPadding(tokenizer)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True,
                                         collate_fn=collate,
                                         generator=torch.Generator().manual_seed(args.seed))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(names))
    total = args.epochs * len(loader)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = transformers.get_linear_schedule_with_warmup(opt, round(args.warmup_ratio * total), total)

    def accuracy(rows):
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(rows), 2 * args.batch_size):
                batch = collate(rows[start:start + 2 * args.batch_size])
                labels = batch.pop("labels")
                correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        model.train()
        return correct / len(rows)

    curve, step, tokens, first_step_s = [], 0, 0, None
    train_started = time.time()
    model.train()
    for _ in range(args.epochs):
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += batch["input_ids"].numel()
            if first_step_s is None:
                first_step_s = time.time() - STARTED
            if step % args.eval_every == 0 or step == total:
                acc = accuracy(validation)
                curve.append({"step": step, "wall_s": time.time() - STARTED, "accuracy": acc})
                print(f"hf step {step}/{total}: validation accuracy {acc:.4f} "
                      f"({time.time() - STARTED:.0f} s)", flush=True)
    train_s = time.time() - train_started
    test_accuracy = accuracy(test)
    if args.save:
        model.save_pretrained(args.save)
    result = {"steps": step, "examples": len(train) * args.epochs, "padded_tokens": tokens,
              "first_step_s": first_step_s, "train_and_eval_s": train_s,
              "validation_curve": curve, "test_accuracy": test_accuracy,
              "wall_s": time.time() - STARTED}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
