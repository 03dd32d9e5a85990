"""Orbax checkpoints of the train state plus a JSON record of the run's position.

Each checkpoint ``<directory>/<step>/`` holds two items:

* ``state`` — the TrainState arrays (step, params, optimizer state), written by every process;
* ``meta`` — JSON: the data position (``step``; batches are a pure function of (seed, step)),
  the seed, label names, the metric history needed for "best" tracking, and the config.

The directory is any path ``etils.epath`` understands (a local folder or ``gs://bucket/run``), so a
preempted TPU VM can resume on another one.

Orbax writes into a temporary directory and renames it when complete (on object stores it writes a
``commit_success.txt`` marker instead), so a run killed while saving leaves the previous checkpoint
intact. What :meth:`Checkpointer.restore` does with a checkpoint that does not load:

* **corrupt** (no commit marker, an unreadable/truncated/missing array file, broken JSON): warn,
  move the step folder aside to ``<directory>-corrupt/<step>-<UTC time>/`` (kept for inspection,
  never deleted; outside ``<directory>`` because orbax deletes uncommitted folders it finds there)
  and try the next older step. The step number is then free, so saving it again works.
* **not corruption** — a permission error, a full or read-only disk, an unreachable bucket, or a
  checkpoint of another model shape: :class:`CheckpointError` naming the path; nothing is moved.
* **every** checkpoint corrupt: :class:`CheckpointError` naming the directory.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
from typing import Any, Literal

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxtl.errors import CheckpointError

log = logging.getLogger("jaxtl")

COMMIT_MARKER = "commit_success.txt"  # written by orbax 0.12 into every finished step folder

# OSError numbers that mean "the environment stops us", never "the bytes are bad".
_ENVIRONMENT_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO,
    errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ETIMEDOUT, errno.ECONNREFUSED,
    errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EBUSY,
}
# The same for errors TensorStore reports as ValueError text (status codes and OS messages).
_ENVIRONMENT_MARKERS = (
    "PERMISSION_DENIED", "Permission denied", "RESOURCE_EXHAUSTED", "No space left",
    "Read-only file system", "Disk quota", "UNAVAILABLE", "UNAUTHENTICATED",
    "DEADLINE_EXCEEDED",
)
# Orbax's words for a restore target that does not fit the stored tree (another model).
_MISMATCH_MARKERS = ("is not compatible with the stored shape", "tree structures do not match")


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def classify(error: BaseException) -> Literal["corrupt", "environment", "mismatch", "other"]:
    """Why a checkpoint failed to load: only ``"corrupt"`` justifies trying an older one."""
    for e in _chain(error):
        if isinstance(e, OSError) and not isinstance(
            e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)
        ):
            if e.errno in _ENVIRONMENT_ERRNOS or isinstance(e, PermissionError):
                return "environment"
    text = " ".join(str(e) for e in _chain(error))
    if any(marker in text for marker in _ENVIRONMENT_MARKERS):
        return "environment"
    if any(marker in text for marker in _MISMATCH_MARKERS):
        return "mismatch"
    if isinstance(error, (ValueError, KeyError, EOFError, FileNotFoundError, NotADirectoryError)):
        # JSONDecodeError, UnicodeDecodeError, TensorStore's DATA_LOSS/OUT_OF_RANGE/NOT_FOUND and
        # "ZSTD ... Data corruption", a missing item folder or file.
        return "corrupt"
    if isinstance(error, OSError):  # another errno we have no reason to call corruption
        return "environment"
    return "other"  # a bug, not a checkpoint problem: let it propagate as it is


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300]


def _is_remote(path: str) -> bool:
    return "://" in path


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...] | None]:
    """``"params/bert/pooler/dense/kernel" -> shape`` for every leaf (None: not an array)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(_key_name(k) for k in path): (tuple(leaf.shape) if hasattr(leaf, "shape") else None)
        for path, leaf in leaves
    }


def first_mismatch(stored: dict, target: dict) -> str | None:
    """Describe the first leaf where ``stored`` and ``target`` (from :func:`flat_shapes`) differ.

    Target order first (params come before optimizer state in a TrainState), then leaves only the
    checkpoint has. None when every target leaf is stored with the same shape.
    """
    for path, shape in target.items():
        if path not in stored:
            return f"{path} (shape {shape}) is not in the checkpoint"
        if shape is not None and stored[path] is not None and tuple(stored[path]) != shape:
            return f"{path} has shape {tuple(stored[path])} in the checkpoint but {shape} here"
    for path, shape in stored.items():
        if path not in target and shape is not None:
            return f"{path} (shape {tuple(shape)}) is in the checkpoint but not in this model"
    return None


class _CorruptStep(Exception):
    """A step that is corrupt (internal: the callers fall back or turn it into CheckpointError)."""


class Checkpointer:
    """Keep-last-N orbax checkpoints of ``{"state", "meta"}`` in one directory.

    ``directory``: a local path or anything ``etils.epath`` opens (``gs://bucket/run/checkpoints``).
    ``read_only``: for export/inspection; never creates, moves or deletes anything.
    """

    def __init__(self, directory: str | os.PathLike | epath.Path, *, keep: int = 2,
                 async_save: bool = True, read_only: bool = False):
        text = os.fspath(directory)
        # A gs:// path has no "absolute" form; a relative local one must be made absolute for orbax.
        self.directory = epath.Path(text) if _is_remote(text) else epath.Path(os.path.abspath(text))
        self.read_only = read_only
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep,
                    create=not read_only,
                    read_only=read_only,
                    enable_async_checkpointing=async_save,
                    cleanup_tmp_directories=not read_only,  # unfinished saves of a killed run
                ),
                item_names=("state", "meta"),
            )
        except OSError as e:  # unreadable/forbidden folder, bucket unreachable
            raise CheckpointError(
                f"cannot open checkpoint directory {self.directory}: {_one_line(e)}"
            ) from e

    @property
    def quarantine(self) -> epath.Path:
        """Where corrupt steps are moved: ``<directory>-corrupt/``."""
        return self.directory.parent / f"{self.directory.name}-corrupt"

    def step_path(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start writing (asynchronously); :meth:`wait` blocks until it is on disk.

        A full, read-only or forbidden disk raises :class:`CheckpointError` naming the path (here
        or, for an asynchronous save, from :meth:`wait` / the next save).
        """
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as e:
            self._raise_if_environment(e, f"could not write checkpoint {self.step_path(step)}")
            raise

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._raise_if_environment(e, f"could not write a checkpoint in {self.directory}")
            raise

    @staticmethod
    def _raise_if_environment(error: Exception, what: str) -> None:
        if classify(error) == "environment":
            raise CheckpointError(f"{what}: {_one_line(error)}") from error

    # ---------------------------------------------------------------------------------------
    # Reading

    def _check_committed(self, step: int) -> None:
        if not (self.step_path(step) / COMMIT_MARKER).exists():
            raise FileNotFoundError(f"{self.step_path(step)} has no {COMMIT_MARKER} (unfinished save)")

    def _check_shapes(self, step: int, abstract: Any, subtree: str | None = None) -> None:
        """CheckpointError when the stored tree is not ``abstract``'s (another model/optimizer).

        Unreadable metadata propagates (the caller classifies it as corruption).
        """
        stored_tree = ocp.StandardCheckpointHandler().metadata(self.step_path(step) / "state")
        stored_tree = getattr(stored_tree, "tree", stored_tree)
        if subtree is not None:
            if subtree not in stored_tree:
                raise CheckpointError(f"checkpoint {self.step_path(step)} holds no {subtree!r}")
            stored_tree = {subtree: stored_tree[subtree]}
            abstract = {subtree: abstract}
        mismatch = first_mismatch(flat_shapes(stored_tree), flat_shapes(abstract))
        if mismatch:
            raise CheckpointError(
                f"checkpoint {self.step_path(step)} was saved for another model or optimizer: "
                f"{mismatch}. Use another --workdir, or --overwrite to start afresh."
            )

    def _load(self, step: int, load: Any) -> Any:
        """``load(step)`` with errors sorted: :class:`_CorruptStep` for corruption,
        :class:`CheckpointError` naming the step path for the environment or another model, and
        anything else (a bug) as it is."""
        try:
            self._check_committed(step)
            return load(step)
        except CheckpointError:
            raise
        except Exception as e:
            kind = classify(e)
            if kind == "corrupt":
                raise _CorruptStep(_one_line(e)) from e
            if kind in ("environment", "mismatch"):
                raise CheckpointError(
                    f"cannot read checkpoint {self.step_path(step)}: {_one_line(e)}"
                ) from e
            raise

    def restore(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """The newest checkpoint that restores, onto ``abstract_state``'s shardings.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (it may be
        a different mesh from the one that saved). Returns ``(state, meta, step)`` or None when
        there is no checkpoint. Corrupt steps newer than the one restored are moved to
        :attr:`quarantine` (see the module docstring); anything else raises CheckpointError.
        """

        def load(step):
            self._check_shapes(step, abstract_state)
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
            if not isinstance(restored["meta"], dict):
                raise ValueError(f"meta is a {type(restored['meta']).__name__}, not a JSON object")
            return restored

        skipped = []
        for step in reversed(self.steps()):
            try:
                restored = self._load(step, load)
            except _CorruptStep as e:
                reason = str(e)
                log.warning("checkpoint %s is corrupt (%s); trying an older one",
                            self.step_path(step), reason)
                skipped.append((step, reason))
                continue
            if skipped:
                self._quarantine([s for s, _ in skipped])
                log.warning("resumed from step %d; corrupt checkpoints %s moved to %s",
                            step, [s for s, _ in skipped], self.quarantine)
            return restored["state"], dict(restored["meta"]), step
        if skipped:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored (all corrupt: "
                + "; ".join(f"step {s}: {r}" for s, r in skipped)
                + "). Move that folder away, or use --overwrite, to start afresh."
            )
        return None

    def _quarantine(self, steps: list[int]) -> None:
        """Move corrupt step folders to :attr:`quarantine` so their step numbers can be saved again.

        Process 0 moves; every process then rereads the step list. A store that cannot rename a
        folder (some object-store backends) deletes it instead, saying so.
        """
        if self.read_only:
            return
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        if jax.process_index() == 0:
            self.quarantine.mkdir(parents=True, exist_ok=True)
            for step in steps:
                source, target = self.step_path(step), self.quarantine / f"{step}-{stamp}"
                try:
                    source.rename(target)
                    log.warning("moved corrupt checkpoint %s to %s", source, target)
                except (OSError, NotImplementedError) as e:
                    log.warning("could not move corrupt checkpoint %s (%s); deleting it",
                                source, _one_line(e))
                    source.rmtree()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxtl: corrupt checkpoints moved")
        self.manager.reload()

    def read_meta(self, step: int | None = None) -> tuple[dict, int] | None:
        """``(meta, step)`` of ``step``, or of the newest step whose meta reads (None: none does).

        Only the small JSON item is read (no arrays), e.g. to compare a rerun's config.
        """

        def load(s):
            meta = self.manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            if not isinstance(meta, dict):
                raise ValueError(f"meta is a {type(meta).__name__}, not a JSON object")
            return meta

        if step is not None:
            self._require_step(step)
            try:
                return self._load(step, load), step
            except _CorruptStep as e:
                raise CheckpointError(f"checkpoint {self.step_path(step)} is corrupt: "
                                      f"{e}") from e
        for s in reversed(self.steps()):
            try:
                return self._load(s, load), s
            except _CorruptStep as e:
                log.warning("checkpoint %s: meta unreadable (%s)", self.step_path(s), e)
        return None

    def _require_step(self, step: int) -> None:
        if step not in self.steps():
            raise CheckpointError(
                f"{self.directory} has no checkpoint of step {step}; it has {self.steps() or 'none'}"
            )

    def restore_params(self, abstract_params: Any, step: int | Literal["best"] | None = None
                       ) -> tuple[Any, int] | None:
        """Only the parameters (no optimizer needed): for export. Reads, never moves anything.

        ``step``: None — the newest checkpoint that restores (older ones when newer are corrupt);
        an int — exactly that step; ``"best"`` — the step recorded as best in the newest meta
        (``meta["best"]["step"]``), which must still be kept (``train.keep_checkpoints``).
        Returns ``(params, step)``, or None when there is no checkpoint at all.
        """
        item = {"params": abstract_params}

        def load(s):
            self._check_shapes(s, abstract_params, subtree="params")
            restored = self.manager.restore(
                s,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                        partial_restore=True,
                    )
                ),
            )
            return restored["state"]["params"]

        if step == "best":
            found = self.read_meta()
            if found is None:
                return None
            meta, meta_step = found
            best = meta.get("best") or {}
            if "step" not in best:
                raise CheckpointError(
                    f"checkpoint {self.step_path(meta_step)} records no best step (no validation "
                    "set, or no evaluation yet)"
                )
            step = int(best["step"])
            if step not in self.steps():
                raise CheckpointError(
                    f"the best step {step} is no longer kept in {self.directory} (kept: "
                    f"{self.steps()}); its model is the HF folder best/ of the workdir"
                )
        if step is not None:
            self._require_step(step)
            try:
                return self._load(step, load), step
            except _CorruptStep as e:
                raise CheckpointError(f"checkpoint {self.step_path(step)} is corrupt: "
                                      f"{e}") from e
        skipped = []
        for s in reversed(self.steps()):
            try:
                return self._load(s, load), s
            except _CorruptStep as e:
                log.warning("checkpoint %s is corrupt (%s); trying an older one",
                            self.step_path(s), e)
                skipped.append(s)
        if skipped:
            raise CheckpointError(f"no checkpoint in {self.directory} can be restored "
                                  f"(all corrupt: steps {skipped})")
        return None

    def close(self) -> None:
        self.wait()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves carrying the target shardings (for restore)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )

