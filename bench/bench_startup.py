"""Where the demo's start-up goes: the real ``jaxtl finetune`` run, timed phase by phase.

Each run is a fresh process that imports the recipe as the CLI does, wraps the functions that
mark the phases with timers, and calls ``jaxtl.cli.main`` on configs/demo_finetune.yaml with one
update and no held-out splits (as ``bench_compile_cache.py --cli``). JAX's own compile events
(``jax.monitoring``: tracing, lowering to MLIR, backend compile or cache read) are attributed
to the phase they fall in. The first run warms the compilation cache (a folder of its own) and
is reported as ``cold``; the next ``--runs`` are warm, and the table shows their medians.

    python bench/bench_startup.py                 # 1 cold + 3 warm runs
    python bench/bench_startup.py --runs 5

Phases (seconds since the process started, from /proc):
  imports       interpreter start -> the recipe's modules imported (jax, flax, optax, orbax, ...)
  config        config parsing, workdir checks, logging, cache set-up
  tokenizer     ``hf.tokenizer`` (imports transformers)
  data          ``load_classification_data``: read, check, split and tokenize the 10.6k sentences
  model         model config, ``hf.pretrained_weights`` (read safetensors)
  train state   ``sharding.create_train_state`` (the jitted placement of params + AdamW state)
  first step    state ready -> first update finished (trace, lower, cache read, run)

Appends to bench/results/startup.json.
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

CHILD = r"""
import json, sys, time
marks = []
events = []
def mark(name):
    marks.append((name, time.time()))
import jax.monitoring
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: events.append((time.time(), event, secs)))
import jaxtl.cli, jaxtl.tasks.classification  # what `jaxtl finetune` imports before any work
mark("imports")
from jaxtl import hf, sharding, runlog
from jaxtl.data import classification as cls_data
def wrap(module, name, end, begin=None):
    inner = getattr(module, name)
    def timed(*a, **k):
        if begin:
            mark(begin)
        try:
            return inner(*a, **k)
        finally:
            mark(end)
    setattr(module, name, timed)
wrap(hf, "tokenizer", "tokenizer", begin="config")  # config: from the imports to the tokenizer
wrap(cls_data, "load_classification_data", "data")
wrap(hf, "pretrained_weights", "weights")
wrap(sharding, "create_train_state", "train state")
code = jaxtl.cli.main(sys.argv[1:])
start = runlog.process_start_time()
print(json.dumps({"marks": [(n, t - start) for n, t in marks],
                  "events": [(t - start, e, s) for t, e, s in events], "rc": code}))
"""

PHASES = ("imports", "config", "tokenizer", "data", "model", "train state", "first step")
EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
          "/jax/core/compile/backend_compile_duration": "compile or load",
          "/jax/compilation_cache/cache_retrieval_time_sec": "cache read"}


def one_run(config: Path, workdir: Path, cache: Path) -> dict:
    env = dict(os.environ, JAXTL_COMPILATION_CACHE=str(cache),
               GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"))
    proc = subprocess.run([sys.executable, "-c", CHILD, "finetune", "--config", str(config),
                           "--workdir", str(workdir)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    first_step = next(r for r in metrics if r["split"] == "compile")["first_step_s"]
    marks = {}
    for name, t in out["marks"]:  # the first time each phase ends (the run may call them again)
        marks.setdefault(name, t)
    ends = [marks["imports"], marks["config"], marks["tokenizer"], marks["data"],
            marks["weights"], marks["train state"], first_step]
    phases = dict(zip(PHASES, [ends[0]] + [b - a for a, b in zip(ends, ends[1:])]))
    bounds = [0.0] + ends
    compile_events = {p: {} for p in PHASES}
    for t, event, secs in out["events"]:
        kind = EVENTS.get(event)
        if kind is None:
            continue
        phase = next((p for p, lo, hi in zip(PHASES, bounds, bounds[1:]) if lo <= t <= hi), None)
        if phase is not None:
            compile_events[phase][kind] = compile_events[phase].get(kind, 0.0) + secs
    return {"first_step_s": first_step, "phases_s": phases, "jax_events_s": compile_events}


def main() -> None:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="warm runs after the cold one")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "startup.json"))
    args = p.parse_args()
    record = {"command": "python " + " ".join(sys.argv), "load_avg_start": os.getloadavg(),
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    raw = yaml.safe_load((ROOT / "configs" / "demo_finetune.yaml").read_text())
    raw["data"].update(validation_fraction=0.0, test_fraction=0.0)
    raw["train"].update(max_steps=1, progress=False, tensorboard=False, export_best=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "demo.yaml"
        config.write_text(yaml.safe_dump(raw))
        for i in range(args.runs + 1):
            r = one_run(config, Path(tmp) / f"run{i}", Path(tmp) / "xla")
            r["cache"] = "cold" if i == 0 else "warm"
            runs.append(r)
            print(f"{r['cache']:<5} first step {r['first_step_s']:.2f} s: " + ", ".join(
                f"{k} {v:.2f}" for k, v in r["phases_s"].items()), flush=True)
    record["runs"] = runs
    record["load_avg_end"] = os.getloadavg()
    warm = runs[1:]
    print(f"\nmedian of {len(warm)} warm runs (s since process start; jax compile events inside):")
    for phase in PHASES:
        events = {k: statistics.median(r["jax_events_s"][phase].get(k, 0.0) for r in warm)
                  for k in sorted({k for r in warm for k in r["jax_events_s"][phase]})}
        detail = ", ".join(f"{k} {v:.2f}" for k, v in events.items() if v >= 0.01)
        print(f"  {phase:<12} {statistics.median(r['phases_s'][phase] for r in warm):6.2f}"
              + (f"   ({detail})" if detail else ""))
    print(f"  {'total':<12} {statistics.median(r['first_step_s'] for r in warm):6.2f}")
    out = Path(args.out)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + [record], indent=2) + "\n")


if __name__ == "__main__":
    main()
