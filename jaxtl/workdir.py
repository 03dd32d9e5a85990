"""One workdir, one run: comparing a rerun's config with the run's, replacing export folders
atomically, and repairing what a kill left (a torn metrics line, a half-moved export)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from jaxtl.errors import ConfigError

log = logging.getLogger("jaxtl")

# Keys whose change does not make another run: its length, where it runs, how it reports/saves.
ALLOWED_CHANGES = (
    "train.max_steps", "train.epochs", "mesh.", "train.progress", "train.tensorboard",
    "train.log_every", "train.eval_batch_size", "train.keep_checkpoints", "train.save_every",
    "train.save_every_minutes", "train.export_best",
)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not (prefix + key).startswith("model.overrides"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def compare_configs(old: dict, new: dict) -> tuple[list, list]:
    """``(differences, allowed)``: lists of ``(dotted key, old, new)``."""
    a, b = _flat(old), _flat(new)
    differences, allowed = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            (allowed if key.startswith(ALLOWED_CHANGES) else differences).append((key, a.get(key), b.get(key)))
    return differences, allowed


def check_rerun(workdir: Path, new: dict, *, overwrite: bool) -> None:
    """Refuse to continue a run in ``workdir`` under a config that differs from its own."""
    saved = workdir / "config.yaml"
    if not saved.exists():
        return
    import yaml

    old = yaml.safe_load(saved.read_text()) or {}
    differences, _ = compare_configs(old, new)
    if not differences:
        return
    if overwrite:
        log.warning("--overwrite: removing the previous run in %s", workdir)
        for name in ("checkpoints", "metrics.jsonl", "eval_results.json", "best", "final", "tb", "config.yaml"):
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    lines = "; ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in differences)
    raise ConfigError(f"{workdir} holds a run with another config ({lines}); use another --workdir, "
                      "the same config, or --overwrite to start afresh")


def publish_dir(tmp: Path, dest: Path) -> None:
    """Move the complete folder ``tmp`` to ``dest``, keeping the old ``dest`` until the new one
    is in place."""
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def recover(workdir: Path) -> None:
    """Repair export folders a kill left between the moves of :func:`publish_dir`."""
    for name in ("best", "final"):
        dest, old, tmp = (workdir / name, workdir / f"{name}.old", workdir / f"{name}.tmp")
        if old.exists() and not dest.exists():
            old.rename(dest)
        elif old.exists():
            shutil.rmtree(old)
        if tmp.exists():
            shutil.rmtree(tmp)


def truncate_metrics(path: Path, resume_step: int) -> None:
    """Keep the lines of ``path`` up to ``resume_step``; drop a torn line (from a kill)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: dropping a torn line (the run was killed while writing it)", path)
            continue
        if record.get("step", 0) <= resume_step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
