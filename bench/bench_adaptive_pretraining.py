"""Task-adaptive pretraining (Gururangan et al., 2020) on the demo: continue MiniLM's masked-LM
training on the demo task's own unlabelled training sentences, then fine-tune, against
fine-tuning directly — the same seeds, the same held-out split, side by side (issue 13).

1. The movie-review sentences of the demo's **training split only** (configs/demo_finetune.yaml:
   validation and test sentences are never seen) are written one per document to a text file.
2. ``jaxtl pretrain`` continues all-MiniLM-L6-v2 on them with masked LM only (``data.nsp:
   false``; MiniLM ships no MLM head, so the head starts new — logged), evaluating at step 0 and
   at the end on 5 % of the sentences held out.
3. For each seed: ``jaxtl finetune`` with the demo config from MiniLM (direct) and from the
   adapted export (TAPT); test accuracy of each.

    python bench/bench_adaptive_pretraining.py                         # seeds 0,1,2
    python bench/bench_adaptive_pretraining.py --seeds 0 --tapt-steps 50

Writes bench/results/adaptive_pretraining.json. Everything runs through the CLI in subprocesses,
as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-m", "jaxtl.cli", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tapt-steps", type=int, default=150)
    p.add_argument("--tapt-lr", type=float, default=1e-4)
    p.add_argument("--root", default="runs/bench_tapt")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "adaptive_pretraining.json"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    record = {"command": "python " + " ".join(sys.argv), "time_utc": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_avg_start": os.getloadavg()}

    # 1. The training split's sentences (the demo's own split: data.split_seed).
    import jaxtl.hf
    from jaxtl import config as config_lib
    from jaxtl.data.classification import load_classification_data

    demo = config_lib.load(REPO / "configs" / "demo_finetune.yaml")
    tokenizer = jaxtl.hf.tokenizer(demo.model.pretrained)
    data = load_classification_data(demo.data, tokenizer, max_positions=512)
    corpus = root / "train_sentences.txt"
    corpus.write_text("\n\n".join(" ".join(t for t in pair if t) for pair in data.train.texts) + "\n")
    record["tapt_corpus_sentences"] = len(data.train.texts)
    print(f"{len(data.train.texts)} training sentences -> {corpus}", flush=True)

    # 2. Continued masked-LM pretraining on them.
    tapt_config = root / "tapt.yaml"
    tapt_config.write_text(yaml.safe_dump({
        "task": "pretrain",
        "model": {"pretrained": demo.model.pretrained},
        "data": {"train_files": [str(corpus)], "nsp": False, "max_seq_length": 128,
                 "validation_fraction": 0.05},
        "optim": {"lr": args.tapt_lr, "warmup_ratio": 0.06, "weight_decay": 0.01},
        "train": {"batch_size": 32, "max_steps": args.tapt_steps, "log_every": 25,
                  "eval_every": args.tapt_steps, "seed": 0, "progress": False},
    }))
    t = time.time()
    run_cli("pretrain", "--config", str(tapt_config), "--workdir", str(root / "tapt"), "--overwrite")
    lines = [json.loads(x) for x in (root / "tapt" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if r["split"] == "validation"]
    record["tapt"] = {"seconds": time.time() - t, "steps": args.tapt_steps,
                      "validation_at_start": evals[0], "validation_at_end": evals[-1]}
    print(f"TAPT {args.tapt_steps} steps in {time.time() - t:.0f}s: held-out MLM accuracy "
          f"{evals[0]['mlm_accuracy']:.3f} -> {evals[-1]['mlm_accuracy']:.3f}", flush=True)

    # 3. Fine-tune from MiniLM and from the adapted model, seed by seed.
    results = {"direct": {}, "tapt": {}}
    for seed in seeds:
        for arm, start in (("direct", demo.model.pretrained), ("tapt", str(root / "tapt" / "final"))):
            workdir = root / f"{arm}-seed{seed}"
            t = time.time()
            run_cli("finetune", "--config", str(REPO / "configs" / "demo_finetune.yaml"), "--workdir",
                  str(workdir), "--overwrite", "--set", f"train.seed={seed}",
                  "--set", f"model.pretrained={start}", "--set", "train.progress=false")
            final = json.loads((workdir / "eval_results.json").read_text())
            results[arm][seed] = {"test_accuracy": final["test"]["accuracy"],
                                  "validation_accuracy": final["validation"]["accuracy"],
                                  "seconds": time.time() - t}
            print(f"seed {seed} {arm:<6} test accuracy {final['test']['accuracy']:.4f} "
                  f"({time.time() - t:.0f}s)", flush=True)
    record["finetune"] = results
    summary = {}
    for arm in results:
        accs = [r["test_accuracy"] for r in results[arm].values()]
        summary[arm] = {"mean": statistics.mean(accs),
                        "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "per_seed": accs}
    record["summary"] = summary
    record["load_avg_end"] = os.getloadavg()
    for arm, s in summary.items():
        print(f"{arm:<6} test accuracy mean {s['mean']:.4f} sd {s['sd']:.4f} {s['per_seed']}")
    out = Path(args.out)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + [record], indent=2) + "\n")


if __name__ == "__main__":
    main()
