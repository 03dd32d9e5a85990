"""Orbax checkpoints of the train state plus a JSON record of the run's position.

Each checkpoint ``workdir/checkpoints/<step>/`` holds two items:

* ``state`` — the TrainState arrays (step, params, optimizer state), written by every process;
* ``meta`` — JSON: the data position (``step``; batches are a pure function of (seed, step)),
  the seed, label names, the metric history needed for "best" tracking, and the config.

Orbax writes into a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoint intact. :meth:`Checkpointer.restore` falls back to the
newest checkpoint that restores cleanly, naming any it had to skip.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("jaxtl")


class Checkpointer:
    """Keep-last-N orbax checkpoints of ``{"state", "meta"}``."""

    def __init__(self, directory: str | Path, *, keep: int = 2, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
            item_names=("state", "meta"),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start writing (asynchronously); :meth:`wait` blocks until it is on disk."""
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """The newest checkpoint that restores, onto ``abstract_state``'s shardings.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (it may be
        a different mesh from the one that saved). Returns ``(state, meta, step)`` or None when
        there is no checkpoint. A corrupt checkpoint is reported and skipped.
        """
        skipped = []
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # truncated/corrupt files, shape mismatch, ...
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.warning("checkpoint %s/%d could not be restored (%s); trying an older one",
                            self.directory, step, reason[:300])
                skipped.append((step, reason))
                continue
            if skipped:
                log.warning("resumed from step %d; skipped corrupt checkpoints %s",
                            step, [s for s, _ in skipped])
            return restored["state"], dict(restored["meta"]), step
        if skipped:
            raise RuntimeError(
                f"no checkpoint in {self.directory} could be restored: "
                + "; ".join(f"step {s}: {r}" for s, r in skipped)
            )
        return None

    def read_meta(self, step: int) -> dict:
        """The JSON record saved with ``step`` (config, model metadata, best, ...)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int] | None:
        """Only the parameters of ``step`` (default: the newest; no optimizer needed): for export."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        item = {"params": abstract_params}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                )
            ),
        )
        return restored["state"]["params"], step

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves carrying the target shardings (for restore)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
