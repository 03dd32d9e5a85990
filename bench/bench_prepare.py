"""Prepared pretraining data at corpus scale: preparation throughput, start-up and peak RSS to the
first batch at 1x / 10x / 100x a real corpus, and loader throughput (one core, masking included).

The corpus is asset:python-docs + asset:shakespeare (10.9 MB of English prose and dialogue), the
tokenizer MiniLM-L6's (bert-base-uncased WordPiece, 30,522 ids). Nothing larger is available on an
offline machine, so 10x and 100x are the 1x preparation's shards repeated (hard links: the bytes on
disk are shared, which does not change what start-up reads), with metadata listing every copy.

    python bench/bench_prepare.py                 # ~2-5 minutes on 2 cores
    python bench/bench_prepare.py --workers 2 --scales 1 --skip-in-memory --out /tmp/p2.json

Each start-up is measured in a fresh process (``time`` and ``ru_maxrss`` to the first batch, and
RSS after the imports alone, to separate the libraries' share); the in-memory path
(jaxtl.data.pretraining, tokenizing at every start) is measured at 1x for comparison. Prints a
table and writes bench/results/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _config(folder: Path | None, shard_mb: float, workers: int):
    from jaxtl import assets
    from jaxtl.config import PretrainDataConfig

    files = [assets.resolve("asset:python-docs"), assets.resolve("asset:shakespeare")]
    return PretrainDataConfig(
        train_files=[str(f) for f in files], max_seq_length=128, validation_fraction=0.0,
        prepared_dir=str(folder) if folder else None,
        prepare_shard_mb=shard_mb if folder else 64.0, prepare_workers=workers if folder else None,
    )


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def startup(args) -> dict:
    """One start-up in this (fresh) process: open the data, build the batcher, batch 0."""
    import numpy as np  # noqa: F401

    from jaxtl import assets, hf
    from jaxtl.data import prepared, pretraining
    from jaxtl.data.batching import PretrainingBatcher

    tok_dir = Path(assets.resolve("asset:all-MiniLM-L6-v2"))
    tokenizer = hf.tokenizer(tok_dir)
    rss_imports = _rss_mb()
    start = time.perf_counter()
    if args.folder:
        cfg = _config(Path(args.folder), args.shard_mb, 1)
        train, _ = prepared.open_prepared(cfg, tokenizer, tok_dir, "asset:all-MiniLM-L6-v2",
                                          model_vocab_size=len(tokenizer), may_prepare=False)
    else:
        cfg = _config(None, args.shard_mb, 1)
        train, _ = pretraining.load_pretraining_data(cfg, tokenizer,
                                                     model_vocab_size=len(tokenizer))
    batcher = PretrainingBatcher(train, batch_size=32, seed=0)
    batcher.train_batch(0)
    first_batch_s = time.perf_counter() - start
    result = {"first_batch_s": first_batch_s, "rss_imports_mb": rss_imports,
              "peak_rss_mb": _rss_mb(), "steps_per_epoch": batcher.steps_per_epoch}
    if args.loader_batches:
        steps = batcher.steps_per_epoch
        tokens, start = 0, time.perf_counter()
        for i in range(args.loader_batches):
            batch = batcher.train_batch(1 + (i * 7919) % steps)  # spread over the epoch
            tokens += int(batch["attention_mask"].sum())
        seconds = time.perf_counter() - start
        result.update(loader_tokens_per_s=tokens / seconds,
                      loader_batches_per_s=args.loader_batches / seconds,
                      peak_rss_after_loader_mb=_rss_mb())
    return result


def _measure_startup(folder: Path | None, shard_mb: float, loader_batches: int) -> dict:
    argv = [sys.executable, __file__, "--startup", "--shard-mb", str(shard_mb),
            "--loader-batches", str(loader_batches)]
    if folder:
        argv += ["--folder", str(folder)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _repeat(folder: Path, times: int, out: Path) -> None:
    """A prepared folder holding ``times`` copies of ``folder``'s training shards."""
    meta = json.loads((folder / "metadata.json").read_text())
    (out / "train").mkdir(parents=True)
    shards = []
    for copy in range(times):
        for shard in meta["stores"]["train"]:
            name = f"train/shard-{len(shards):05d}.arrow"
            os.link(folder / shard["file"], out / name)
            shards.append({**shard, "file": name})
    meta["stores"]["train"] = shards
    meta["totals"]["train"] = {k: v * times for k, v in meta["totals"]["train"].items()}
    for name in ("plan.json",):
        (out / name).write_text((folder / name).read_text())
    (out / "metadata.json").write_text(json.dumps(meta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shard-mb", type=float, default=1.0)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--loader-batches", type=int, default=50)
    parser.add_argument("--skip-in-memory", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "prepare.json"))
    parser.add_argument("--startup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup:
        print(json.dumps(startup(args)))
        return

    from jaxtl import assets
    from jaxtl.data import prepared

    tok_dir = Path(assets.resolve("asset:all-MiniLM-L6-v2"))
    results = {"cores": os.cpu_count(), "load_average": os.getloadavg(), "workers": args.workers,
               "shard_mb": args.shard_mb}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "x1"
        cfg = _config(base, args.shard_mb, args.workers)
        start = time.perf_counter()
        meta = prepared.prepare(cfg, tok_dir, "asset:all-MiniLM-L6-v2")
        seconds = time.perf_counter() - start
        text_bytes = sum(s["size"] for s in meta["train_sources"])
        tokens = meta["totals"]["train"]["tokens"]
        results["prepare"] = {
            "seconds": seconds, "text_mb": text_bytes / 1e6, "tokens": tokens,
            "shards": len(meta["stores"]["train"]),
            "tokens_per_s": tokens / seconds, "tokens_per_s_per_worker": tokens / seconds / args.workers,
        }
        print(f"prepare: {text_bytes / 1e6:.1f} MB, {tokens:,} tokens in {seconds:.1f} s "
              f"with {args.workers} worker(s): {tokens / seconds:,.0f} tokens/s", flush=True)
        results["startup"] = {}
        for scale in args.scales:
            folder = base if scale == 1 else Path(tmp) / f"x{scale}"
            if scale != 1:
                _repeat(base, scale, folder)
            found = _measure_startup(folder, args.shard_mb, args.loader_batches if scale == 1 else 0)
            found["tokens"] = tokens * scale
            results["startup"][f"prepared_x{scale}"] = found
            print(f"prepared x{scale}: {found}", flush=True)
        if not args.skip_in_memory:
            found = _measure_startup(None, args.shard_mb, 0)
            results["startup"]["in_memory_x1"] = found
            print(f"in memory x1: {found}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
