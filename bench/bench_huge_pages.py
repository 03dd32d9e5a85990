"""Host memory under XLA:CPU (jaxtl.hostmem): the demo's train step (all-MiniLM-L6-v2 + a new
2-class head, batch 32, dropout on, AdamW, the state donated as in the training loop) with glibc's
malloc on transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, what the ``jaxtl``
command sets) and without, a fresh process each, alternating, warm compilation cache.

    python bench/bench_huge_pages.py --pairs 4 --length 64 --steps 8     # RESULTS §14b
    python bench/bench_huge_pages.py --pairs 3 --length 128 --steps 5

Per run: the first run of the loaded step, the median step, minor page faults per step (the
kernel mapping in a fresh page; each 4 KB page is one, a 2 MB huge page is one) and the process's
peak resident memory. Prints one line per run and the medians; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUNABLE = "glibc.malloc.hugetlb=1"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    fields = ("first_run_s", "step_s", "page_faults_per_step", "max_rss_gb")
    results = {"huge pages": [], "4 KB pages": []}
    with tempfile.TemporaryDirectory() as cache:
        subprocess.run([sys.executable, str(ROOT / "bench" / "bench_layer_loop.py"), "--length",
                        str(args.length), "--steps", "1", "--donate", "--child", "unrolled", cache],
                       check=True, capture_output=True, env={**base, "PYTHONPATH": str(ROOT)})  # fill
        print(f"{'malloc':<11}" + "".join(f"{f:>22}" for f in fields), flush=True)
        for r in range(args.pairs):
            order = ("huge pages", "4 KB pages") if r % 2 == 0 else ("4 KB pages", "huge pages")
            for name in order:
                env = {**base, "PYTHONPATH": str(ROOT)}
                if name == "huge pages":
                    env["GLIBC_TUNABLES"] = TUNABLE
                proc = subprocess.run(
                    [sys.executable, str(ROOT / "bench" / "bench_layer_loop.py"), "--length",
                     str(args.length), "--steps", str(args.steps), "--donate", "--child", "unrolled",
                     cache], check=True, capture_output=True, text=True, env=env)
                rec = json.loads(proc.stdout.strip().splitlines()[-1])
                results[name].append(rec)
                print(f"{name:<11}" + "".join(f"{rec[f]:>22.3f}" for f in fields), flush=True)
    med = {name: {f: statistics.median(r[f] for r in recs) for f in fields}
           for name, recs in results.items()}
    for name, m in med.items():
        print(f"median {name:<11}" + "".join(f"{m[f]:>22.3f}" for f in fields))
    print(f"step: 4 KB / huge = {med['4 KB pages']['step_s'] / med['huge pages']['step_s']:.2f}x")


if __name__ == "__main__":
    main()
