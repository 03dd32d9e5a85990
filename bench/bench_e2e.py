"""End to end: one epoch of the demo through the `jaxtl finetune` CLI vs the usual HF PyTorch
script (bench/hf_finetune.py), each a fresh process timed from its start to its exit.

Same data (the demo's movie-review sentences, its train/validation/test split written to three
CSV files both read), same model (all-MiniLM-L6-v2 + a new 2-class head), batch 32, max length
64, AdamW lr 1e-4 with 10 % linear warmup and decay, weight decay 0.01, clipping at 1.0, one
epoch, the model saved. Each side pads as it does by default: jaxtl to its length buckets over
sortish batches, HF to each random batch's longest example (``DataCollatorWithPadding``).

Two comparisons:

* **epoch** (``--rounds``): the demo as shipped — validation and test evaluated once, at the end.
  jaxtl runs twice per round: with an empty compilation cache (a first run) and with the cache
  that run left (every later run: a rerun, a resume, another seed).
* **curve** (``--curve-rounds``): both evaluate the validation split every ``--eval-every``
  steps; time to ``--target`` accuracy is process start to the end of the first evaluation that
  reaches it, evaluations included. jaxtl with a warm cache.

Rounds alternate which side goes first; medians are reported.

    python bench/bench_e2e.py --rounds 2 --curve-rounds 1   # ~25 min on 2 idle CPU cores
    python bench/bench_e2e.py --rounds 1 --curve-rounds 0 --no-cold --huge-pages-ab   # RESULTS §14

Writes bench/results/e2e.json: wall seconds, examples/s (training examples / wall), time to
target, first-step time, test accuracy, for each run, and the ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_split(folder: Path) -> dict:
    """The demo's train/validation/test split (its config's fractions and split seed) as CSVs."""
    sys.path.insert(0, str(ROOT))
    from jaxtl import config as config_lib, hf
    from jaxtl.data.classification import _carve

    cfg = config_lib.load(ROOT / "configs" / "demo_finetune.yaml", [])
    source = hf.resolve(cfg.data.train_file)
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    train, validation, test = _carve(len(rows), cfg.data, str(source))
    folder.mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", train), ("validation", validation), ("test", test)):
        with open(folder / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["sentence", "label"])
            w.writeheader()
            w.writerows({"sentence": rows[i]["sentence"], "label": rows[i]["label"]} for i in idx)
    return {"train": len(train), "validation": len(validation), "test": len(test),
            "model": str(hf.resolve(cfg.model.pretrained))}


def first_reaching(curve: list[dict], target: float) -> float | None:
    return next((p["wall_s"] for p in curve if p["accuracy"] >= target), None)


def run_jaxtl(data: Path, work: Path, cache: Path, args, curve: bool, extra_env=None) -> dict:
    workdir = work / f"jaxtl-{time.time_ns()}"
    cmd = [sys.executable, "-m", "jaxtl.cli", "finetune", "--config",
           str(ROOT / "configs" / "demo_finetune.yaml"), "--workdir", str(workdir),
           "--set", f"data.train_file={data / 'train.csv'}",
           "--set", f"data.validation_file={data / 'validation.csv'}",
           "--set", f"data.test_file={data / 'test.csv'}",
           "--set", "data.validation_fraction=0", "--set", "data.test_fraction=0",
           "--set", f"train.seed={args.seed}"]
    if curve:
        cmd += ["--set", f"train.eval_every={args.eval_every}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAXTL_COMPILATION_CACHE=str(cache), **(extra_env or {}))
    start = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode:
        raise SystemExit(f"jaxtl failed ({done.returncode}):\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    curve = [{"step": r["step"], "wall_s": r["wall_s"], "accuracy": r["accuracy"]}
             for r in records if r["split"] == "validation"]
    test = [r for r in records if r["split"] == "test"][-1]  # the final evaluation
    compile_line = next(r for r in records if r["split"] == "compile")
    shutil.rmtree(workdir, ignore_errors=True)
    return {"wall_s": wall, "validation_curve": curve, "test_accuracy": test["accuracy"],
            "first_step_s": compile_line["first_step_s"],
            "steps": max(r["step"] for r in records if r["split"] == "train")}


def run_hf(data: Path, work: Path, model: str, args, curve: bool, extra_env=None) -> dict:
    out = work / f"hf-{time.time_ns()}.json"
    save = work / "hf-model"
    cmd = [sys.executable, str(ROOT / "bench" / "hf_finetune.py"), "--data", str(data),
           "--model", model, "--eval-every", str(args.eval_every if curve else 10**9), "--seed", str(args.seed),
           "--save", str(save), "--out", str(out)]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(extra_env or {})})
    wall = time.time() - start
    if done.returncode:
        raise SystemExit(f"hf_finetune.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    shutil.rmtree(save, ignore_errors=True)
    return dict(result, wall_s=wall)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of the one-epoch comparison")
    p.add_argument("--curve-rounds", type=int, default=1,
                   help="rounds of the time-to-accuracy comparison (validation every --eval-every steps)")
    p.add_argument("--eval-every", type=int, default=33)
    p.add_argument("--target", type=float, default=0.80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cold", action="store_true",
                   help="skip the cold-cache jaxtl runs (e.g. to compare accuracy over seeds)")
    p.add_argument("--cache", help="compilation cache folder for the warm runs, kept across rounds and "
                                   "invocations (default: a fresh one per round, filled by its cold run)")
    p.add_argument("--huge-pages-ab", action="store_true",
                   help="also run each warm jaxtl epoch with JAXTL_HUGE_PAGES=off and each HF epoch "
                        "with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (jaxtl.hostmem), alternating")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "e2e.json"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jaxtl-e2e-"))
    split = write_split(work / "data")
    print(f"split: {split['train']} train / {split['validation']} validation / {split['test']} test",
          flush=True)
    runs = {"epoch": {"jaxtl_cold": [], "jaxtl_warm": [], "jaxtl_warm_no_huge_pages": [],
                      "hf_torch": [], "hf_torch_huge_pages": []},
            "curve": {"jaxtl_warm": [], "hf_torch": []}}
    for r in range(max(args.rounds, args.curve_rounds)):
        # --cache, or an empty folder that this round's cold run (or an untimed run) fills
        cache = Path(args.cache) if args.cache else work / f"xla-cache-{r}"

        def fill(curve: bool) -> None:
            if not (cache.is_dir() and any(cache.iterdir())):
                run_jaxtl(work / "data", work, cache, args, curve)  # untimed

        order = ["jaxtl", "hf"] if r % 2 == 0 else ["hf", "jaxtl"]
        for name in order:
            if name == "jaxtl":
                if r < args.rounds:
                    if not args.no_cold:
                        runs["epoch"]["jaxtl_cold"].append(run_jaxtl(work / "data", work, cache, args, False))
                    else:
                        fill(False)
                    variants = [("jaxtl_warm", None)]
                    if args.huge_pages_ab:
                        variants.append(("jaxtl_warm_no_huge_pages", {"JAXTL_HUGE_PAGES": "off"}))
                    for key, extra in variants if r % 2 == 0 else variants[::-1]:
                        runs["epoch"][key].append(run_jaxtl(work / "data", work, cache, args, False, extra))
                if r < args.curve_rounds:
                    fill(True)  # when no cold epoch run filled it
                    runs["curve"]["jaxtl_warm"].append(run_jaxtl(work / "data", work, cache, args, True))
            else:
                if r < args.rounds:
                    variants = [("hf_torch", None)]
                    if args.huge_pages_ab:
                        variants.append(("hf_torch_huge_pages", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}))
                    for key, extra in variants if r % 2 == 0 else variants[::-1]:
                        runs["epoch"][key].append(run_hf(work / "data", work, split["model"], args, False, extra))
                if r < args.curve_rounds:
                    runs["curve"]["hf_torch"].append(run_hf(work / "data", work, split["model"], args, True))
        for mode, by_name in runs.items():
            print(f"round {r + 1} {mode}: " + ", ".join(
                f"{k} {v[-1]['wall_s']:.0f} s (test {v[-1]['test_accuracy']:.4f})"
                for k, v in by_name.items() if len(v) > r), flush=True)

    summary = {"epoch": {}, "curve": {}}
    for mode, by_name in runs.items():
        for name, rs in by_name.items():
            if not rs:
                continue
            hits = [first_reaching(x["validation_curve"], args.target) for x in rs]
            wall = statistics.median(x["wall_s"] for x in rs)
            summary[mode][name] = {
                "runs": len(rs), "wall_s": wall, "examples_per_s": split["train"] / wall,
                "first_step_s": statistics.median(x["first_step_s"] for x in rs),
                "time_to_target_s": statistics.median(hits) if rs and None not in hits else None,
                "test_accuracy": statistics.median(x["test_accuracy"] for x in rs),
            }
        hf = summary[mode].get("hf_torch")
        for name, s in summary[mode].items():
            if name.startswith("hf_torch") or hf is None:
                continue
            s["speedup_vs_hf"] = hf["wall_s"] / s["wall_s"]
            if s["time_to_target_s"] and hf["time_to_target_s"]:
                s["time_to_target_speedup_vs_hf"] = hf["time_to_target_s"] / s["time_to_target_s"]
    for mode, title in (("epoch", "one epoch, the demo's own settings (evaluation at the end)"),
                        ("curve", f"validation every {args.eval_every} steps: time to {args.target:.0%}")):
        print(f"\n{title}")
        print(f"{'':<26}{'runs':>5}{'wall s':>8}{'ex/s':>8}{'first step s':>14}{'to target s':>13}"
              f"{'test acc':>10}{'vs HF':>8}{'tta vs HF':>11}")
        for name, s in summary[mode].items():
            tta = s["time_to_target_s"]
            print(f"{name:<26}{s['runs']:>5}{s['wall_s']:>8.1f}{s['examples_per_s']:>8.1f}{s['first_step_s']:>14.1f}"
                  f"{(f'{tta:.0f}' if tta else '-'):>13}{s['test_accuracy']:>10.4f}"
                  f"{(format(s['speedup_vs_hf'], '.2f') + 'x') if 'speedup_vs_hf' in s else '':>8}"
                  f"{(format(s['time_to_target_speedup_vs_hf'], '.2f') + 'x') if 'time_to_target_speedup_vs_hf' in s else '':>11}")
    record = {"command": "python " + " ".join(sys.argv), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cpus": os.cpu_count(), "load_avg_end": os.getloadavg(), "split": split,
              "summary": summary, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + [record], indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
