"""One workdir, one run: files that are whole or absent after a kill at any moment, and a rerun
that continues only the run it was started with.

Paths are ``etils.epath`` paths (or anything it accepts: ``str``, ``pathlib.Path``,
``gs://bucket/run``). What the training loop calls, in order:

    workdir.recover(wd)                                       # process 0, before anything else
    allowed = workdir.check_rerun(wd, cfg.to_dict(), overwrite=args.overwrite)
    workdir.write_text_atomic(wd / "config.yaml", yaml_text)  # only after check_rerun
    log = workdir.MetricsLog(wd / "metrics.jsonl", resume_step=start_step)
    ...
    tmp = workdir.staging_path(wd / "best"); hf.save(..., tmp); (tmp / "jaxtl_best.json").write_text(...)
    workdir.publish_dir(tmp, wd / "best")

Publishing an export folder (``best/``, ``final/``) goes through three renames; :func:`recover`
repairs whatever a kill between any two of them left:

==========================================  ====================================================
left behind                                 repair
==========================================  ====================================================
``dest.tmp`` (written, not yet published)   deleted: the run re-exports it, because the step
                                            it belongs to is not checkpointed before publishing
                                            finishes (eval -> export -> checkpoint)
``dest.old`` and no ``dest``                ``dest.old`` renamed back to ``dest``
``dest.old`` and ``dest`` (the new one)     ``dest.old`` deleted
==========================================  ====================================================

On object stores (``gs://``) a folder rename is a copy and delete per object, not atomic; the same
rules still leave one whole folder, provided the kill did not land inside one of the renames.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from typing import Any, Iterable

from etils import epath

from jaxtl.errors import ConfigError, DataError

log = logging.getLogger("jaxtl")

EXPORT_NAMES = ("best", "final")
STAGING_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"

# What a run writes into its workdir (train.py's module docstring); --overwrite removes exactly
# these, never other files a user keeps there.
RUN_OUTPUTS = (
    "checkpoints", "checkpoints-corrupt", "metrics.jsonl", "tb", "best", "final",
    "eval_results.json", "config.yaml",
)


def _path(path: Any) -> epath.Path:
    return epath.Path(path)


def _remove(path: epath.Path) -> None:
    if path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()


# ---------------------------------------------------------------------------------------------
# Whole files and folders


def write_text_atomic(path: Any, text: str) -> None:
    """Write ``path`` so that a reader (or a rerun after a kill) sees the old or the new text,
    never a part: write ``<path>.tmp``, then rename over ``path``."""
    path = _path(path)
    tmp = path.parent / (path.name + STAGING_SUFFIX)
    tmp.write_text(text)
    tmp.replace(path)


def staging_path(dest: Any) -> epath.Path:
    """The empty folder beside ``dest`` to write a new version into (a stale one is removed)."""
    dest = _path(dest)
    tmp = dest.parent / (dest.name + STAGING_SUFFIX)
    _remove(tmp)
    return tmp


def _old_path(dest: epath.Path) -> epath.Path:
    return dest.parent / (dest.name + OLD_SUFFIX)


def _move_aside(dest: epath.Path) -> None:
    """Step 1: the current ``dest`` (if any) becomes ``dest.old``."""
    dest = _path(dest)
    if dest.exists():
        dest.rename(_old_path(dest))


def _move_in(tmp: epath.Path, dest: epath.Path) -> None:
    """Step 2: the fully written ``tmp`` becomes ``dest``."""
    tmp, dest = _path(tmp), _path(dest)
    tmp.rename(dest)


def _drop_old(dest: epath.Path) -> None:
    """Step 3: the previous version goes."""
    dest = _path(dest)
    _remove(_old_path(dest))


def publish_dir(tmp: Any, dest: Any) -> None:
    """Replace folder ``dest`` by the fully written folder ``tmp`` (from :func:`staging_path`).

    At every moment ``dest`` or ``dest.old`` holds a whole folder; :func:`recover_export` repairs
    the state a kill between the steps leaves.
    """
    tmp, dest = _path(tmp), _path(dest)
    if not tmp.is_dir():
        raise FileNotFoundError(f"nothing to publish: {tmp} is not a folder")
    _recover_moves(dest)  # a leftover .old from an earlier kill must not be overwritten blindly
    _move_aside(dest)
    _move_in(tmp, dest)
    _drop_old(dest)


def _recover_moves(dest: epath.Path) -> list[str]:
    old, actions = _old_path(dest), []
    if old.exists():
        if dest.exists():
            _remove(old)
            actions.append(f"removed {old} (the new {dest.name}/ was already in place)")
        else:
            old.rename(dest)
            actions.append(f"restored {dest} from {old}")
    return actions


def recover_export(dest: Any) -> list[str]:
    """Repair what a kill inside :func:`publish_dir` left for ``dest``; returns what was done."""
    dest = _path(dest)
    actions = _recover_moves(dest)
    tmp = dest.parent / (dest.name + STAGING_SUFFIX)
    if tmp.exists():
        _remove(tmp)
        actions.append(f"removed unpublished {tmp}")
    return actions


def recover(workdir: Any, names: Iterable[str] = EXPORT_NAMES) -> list[str]:
    """At start-up (process 0): repair the export folders ``names`` and remove half-written files
    (``*.tmp`` of :func:`write_text_atomic` / :func:`truncate_metrics`). Logs and returns what it did.
    """
    workdir = _path(workdir)
    if not workdir.exists():
        return []
    actions = []
    for name in names:
        actions += recover_export(workdir / name)
    for name in ("metrics.jsonl", "config.yaml", "eval_results.json"):
        tmp = workdir / (name + STAGING_SUFFIX)
        if tmp.exists():
            _remove(tmp)
            actions.append(f"removed half-written {tmp}")
    for action in actions:
        log.warning("workdir repair after an interrupted run: %s", action)
    return actions


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def _parse_metrics(path: epath.Path) -> list[dict]:
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                # The last line, cut by a kill in the middle of its write: the step it belongs to
                # is recomputed on resume, so dropping it loses nothing.
                log.warning("%s: dropping the torn last line %d (%r...)", path, number, line[:60])
                continue
            raise DataError(f"{path} line {number} is not a JSON object ({e}): {line[:80]!r}") from None
        records.append(record)
    return records


def read_metrics(path: Any) -> list[dict]:
    """The records of a ``metrics.jsonl``; a torn last line (a kill mid-write) is dropped with a
    warning; a bad line anywhere else is a :class:`DataError` naming the file and line."""
    return _parse_metrics(_path(path))


def truncate_metrics(path: Any, resume_step: int) -> list[dict]:
    """Keep the records with ``step <= resume_step`` (later ones were written by the interrupted
    run and are computed again, identically), dropping a torn last line; rewrite atomically.
    Returns the kept records."""
    path = _path(path)
    if not path.exists():
        return []
    kept = [r for r in _parse_metrics(path) if r.get("step", 0) <= resume_step]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return kept


class MetricsLog:
    """Append-only ``metrics.jsonl``: one ``write`` per line, flushed at once, fsynced by
    :meth:`sync` (call it when a checkpoint is saved, so the file holds every line the checkpoint's
    step needs). Opening it truncates to ``resume_step``. Process 0 only.

    Object stores cannot append; a ``gs://`` workdir needs the lines written to a local file and
    copied (not handled here).
    """

    def __init__(self, path: Any, *, resume_step: int):
        self.path = _path(path)
        truncate_metrics(self.path, resume_step)
        self._file = self.path.open("a")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def sync(self) -> None:
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except (AttributeError, io.UnsupportedOperation):  # a remote file object has no descriptor to sync
            pass

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


# ---------------------------------------------------------------------------------------------
# Rerunning in a workdir: the same run, or --overwrite


# Keys a rerun may change: the run's length, the device mesh (process count is not in the config),
# and what only changes reporting or what is saved, not the numbers trained. `train.export_best`
# only decides whether best/ is written. `mesh.*` covers every key under mesh.
ALLOWED_CHANGES = (
    "train.max_steps", "train.epochs", "mesh.*",
    "train.progress", "train.tensorboard", "train.log_every", "train.eval_batch_size",
    "train.keep_checkpoints", "train.save_every", "train.save_every_minutes", "train.export_best",
    "train.eval_at_start",
)


class _Absent:
    def __repr__(self):
        return "(absent)"


ABSENT = _Absent()  # a key one of the configs does not have


@dataclasses.dataclass(frozen=True)
class Change:
    key: str  # dotted, e.g. "train.seed"
    old: Any
    new: Any

    def __str__(self):
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    if isinstance(value, str) and value:
        return value
    return json.dumps(value)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 0}}`` -> ``{"train.seed": 0}``; nested dicts too (model.overrides);
    lists compare whole (tuples as lists)."""
    flat = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def is_allowed(key: str) -> bool:
    return any(
        key == rule or (rule.endswith(".*") and key.startswith(rule[:-1])) for rule in ALLOWED_CHANGES
    )


def compare_configs(old: dict, new: dict, defaults: dict | None = None
                    ) -> tuple[list[Change], list[Change]]:
    """``(differences, allowed_changes)`` between two resolved configs (``Config.to_dict()``).

    ``defaults``: the config defaults (:func:`config_defaults`); a key the old config lacks (added
    to jaxtl after that run began) is compared against its default instead of reported absent.
    """
    old_flat, new_flat = flatten(old), flatten(new)
    default_flat = flatten(defaults) if defaults else {}
    differences, allowed = [], []
    for key in sorted(set(old_flat) | set(new_flat)):
        before = old_flat.get(key, default_flat.get(key, ABSENT))
        after = new_flat.get(key, ABSENT)
        if before == after:
            continue
        (allowed if is_allowed(key) else differences).append(Change(key, before, after))
    return differences, allowed


def format_differences(changes: Iterable[Change]) -> str:
    """One line per key: ``train.seed: 0 -> 1``."""
    return "\n".join(str(change) for change in changes)


def config_defaults(task: str) -> dict:
    """The default resolved config of ``task`` (finetune/pretrain), as ``Config.to_dict()`` gives."""
    from jaxtl import config as config_lib

    return config_lib.Config(task=task, data=config_lib.DATA_CLASSES[task]()).to_dict()


def previous_config(workdir: Any) -> tuple[dict, str] | None:
    """``(config, where it came from)`` of the run in ``workdir``: the newest checkpoint whose
    meta reads, else ``config.yaml``; None when the workdir holds no run."""
    import yaml

    from jaxtl.checkpoint import Checkpointer

    workdir = _path(workdir)
    checkpoints = workdir / "checkpoints"
    if checkpoints.is_dir():
        found = Checkpointer(checkpoints, read_only=True).read_meta()
        if found is not None and isinstance(found[0].get("config"), dict):
            meta, step = found
            return meta["config"], f"checkpoint {checkpoints / str(step)}"
    config_file = workdir / "config.yaml"
    if config_file.exists():
        try:
            config = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{config_file} is not valid YAML ({e}); use --overwrite to start afresh") from None
        if isinstance(config, dict):
            return config, str(config_file)
    return None


def has_run(workdir: Any) -> bool:
    workdir = _path(workdir)
    return any((workdir / name).exists() for name in RUN_OUTPUTS) or any(
        (workdir / (name + suffix)).exists() for name in EXPORT_NAMES for suffix in (STAGING_SUFFIX, OLD_SUFFIX)
    )


def remove_run(workdir: Any) -> list[epath.Path]:
    """Delete what a run wrote in ``workdir`` (:data:`RUN_OUTPUTS` and export leftovers), nothing
    else; each path is logged. Returns the removed paths."""
    workdir = _path(workdir)
    names = list(RUN_OUTPUTS) + [n + s for n in EXPORT_NAMES for s in (STAGING_SUFFIX, OLD_SUFFIX)]
    names += [n + STAGING_SUFFIX for n in ("metrics.jsonl", "config.yaml", "eval_results.json")]
    removed = []
    for name in names:
        path = workdir / name
        if path.exists():
            _remove(path)
            removed.append(path)
            log.warning("--overwrite: removed %s", path)
    return removed


def check_rerun(workdir: Any, new_config: dict, *, overwrite: bool) -> list[Change]:
    """Before a run starts in ``workdir`` (and before it writes config.yaml): is it the same run?

    * no previous run: nothing to do;
    * ``overwrite``: the previous run's outputs are deleted (logged, like Hugging Face's
      ``overwrite_output_dir``) and the run starts afresh;
    * a config differing in a key outside :data:`ALLOWED_CHANGES`: :class:`ConfigError` listing
      each such key with its old and new value;
    * otherwise: the run resumes; returns the allowed changes (logged).
    """
    workdir = _path(workdir)
    if overwrite:
        if has_run(workdir):
            remove_run(workdir)
        return []
    previous = previous_config(workdir)
    if previous is None:
        return []
    old, source = previous
    task = new_config.get("task", "finetune")
    defaults = config_defaults(task) if task in ("finetune", "pretrain") else None
    differences, allowed = compare_configs(old, new_config, defaults)
    if differences:
        raise ConfigError(
            f"{workdir} holds a run with another config (from {source}): "
            + "; ".join(str(change) for change in differences)
            + ". Use the same config to resume, another --workdir, or --overwrite to start afresh."
        )
    for change in allowed:
        log.info("rerun of %s with %s", workdir, change)
    return allowed

