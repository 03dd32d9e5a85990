"""What a run reports, and where: human-readable logs on stderr (process 0), ``metrics.jsonl``
and TensorBoard scalars, model FLOPs utilisation, and JAX's persistent compilation cache."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import jax

import jaxtl
from jaxtl import hostmem, workdir as workdir_lib


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (it may be swapped, e.g. by test capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def setup_logging() -> None:
    """Human-readable logs on stderr from process 0 only (other processes warn and above)."""
    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    logger = logging.getLogger("jaxtl")
    logger.setLevel(level)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s jaxtl: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    for noisy in ("orbax", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # absl carries orbax's chatter ("Given directory is read only", ...); jaxtl reports what
    # matters about checkpoints itself.
    logging.getLogger("absl").setLevel(logging.ERROR)


# Python's start to the ``jaxtl`` command's first line takes well under this; a larger gap means
# the process ran something else first and then exec'd jaxtl.
ENTRY_GAP_S = 2.0


def process_start_time() -> float:
    """When this process started (``time.time()`` scale): from ``/proc`` on Linux, else the
    moment this module was imported.

    The kernel gives the start in clock ticks since boot (``/proc/self/stat`` field 22); the
    boot moment is taken as now minus ``/proc/uptime`` (10 ms resolution), not ``/proc/stat``'s
    ``btime``, which is truncated to whole seconds and made every start-up read up to 1 s long
    (0.94 s on the benchmark host, bench/RESULTS.md §15b).

    That start is the fork. A shell that runs ``bash -c "pip install ... && jaxtl ..."`` (or a
    script ending in ``exec jaxtl``) hands its own process to jaxtl, whose fork was minutes
    earlier; when the ``jaxtl`` command began (``JAXTL_ENTRY_TIME``, set by
    :func:`jaxtl.cli.entry`, with this process's pid) more than ``ENTRY_GAP_S`` after the fork,
    that moment is the start.
    """
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        forked = time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED
    pid, _, when = os.environ.get(jaxtl.ENTRY_TIME_ENV, "").partition(":")
    if pid != str(os.getpid()):  # unset, or inherited from the process that started this one
        return forked
    try:
        entered = float(when)
    except ValueError:
        return forked
    return entered if entered - forked > ENTRY_GAP_S else forked


_IMPORTED = time.time()


def enable_compilation_cache() -> str | None:
    """JAX's persistent compilation cache, on by default in ``$JAXTL_CACHE/xla`` (beside the
    assets; default ``~/.cache/jaxtl/xla``), so a rerun or resume does not compile its steps
    again. ``JAXTL_COMPILATION_CACHE`` names another folder, or ``off`` disables it."""
    setting = os.environ.get("JAXTL_COMPILATION_CACHE", "")
    if hostmem.switched_off(setting):
        return None
    folder = setting or os.path.join(
        os.environ.get("JAXTL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxtl")), "xla")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def _summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without torch where torch is installed but not
    yet imported: ``tensorboardX.writer`` imports torch (1.5 s of start-up) only to accept torch
    tensors as values, and jaxtl passes Python floats."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """``metrics.jsonl`` (one object per line; see :class:`jaxtl.workdir.MetricsLog`) and
    TensorBoard scalars, process 0 only."""

    def __init__(self, workdir: Path, *, tensorboard: bool, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.log = self.tb = None
        self.started = process_start_time()
        if not self.enabled:
            return
        # Lines past the step we resume from were written by the interrupted run; they are
        # computed again (identically), so they go, and so does a line torn by a kill.
        self.log = workdir_lib.MetricsLog(workdir / "metrics.jsonl", resume_step=resume_step)
        if tensorboard:
            self.tb = _summary_writer_class()(str(workdir / "tb"), purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        """One record; ``wall_s`` (seconds since this process started) is added to it, so
        curves can be plotted against time as well as steps."""
        if not self.enabled:
            return
        record = {**record, "wall_s": round(time.time() - self.started, 3)}
        self.log.write(record)
        if self.tb is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if (isinstance(value, (int, float)) and key not in ("step", "wall_s")
                        and math.isfinite(value)):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])
            self.tb.flush()

    def sync(self) -> None:
        """Make what was written durable (at checkpoint boundaries)."""
        if self.log is not None:
            self.log.sync()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.tb is not None:
            self.tb.close()


def mfu_record(flops_per_s: float, num_devices: int) -> dict:
    """Model FLOPs utilisation against a large matmul timed on this device (``mfu``) and, on
    accelerators with a known data-sheet peak, against that (``mfu_vendor``)."""
    if not flops_per_s:
        return {}
    from jaxtl import flops

    out = {"model_flops_per_s": flops_per_s,
           "mfu": flops_per_s / (num_devices * flops.measured_peak_flops())}
    vendor = flops.vendor_peak_flops()
    if vendor:
        out["mfu_vendor"] = flops_per_s / (num_devices * vendor)
    return out
