"""Every error jaxtl raises on purpose, in one place; imports nothing from jaxtl.

The CLI maps them to exit statuses: bad input (config, data, checkpoint, asset) exits 2 with one
line naming the culprit; a non-finite loss or gradient exits 3; a run stopped by a signal exits
128 + the signal number after saving a checkpoint.
"""

from __future__ import annotations

import signal

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3


class JaxtlError(Exception):
    """Base of the errors below: a problem the user can fix, described in one message."""


class ConfigError(JaxtlError, ValueError):
    """A configuration value jaxtl cannot honour; the message names the key and value."""


class DataError(JaxtlError, ValueError):
    """Bad input data; the message names the file, row, column or value."""


class AssetError(DataError):
    """An ``asset:NAME`` that could not be fetched, verified or unpacked."""


class CheckpointError(JaxtlError, ValueError):
    """A checkpoint (HF folder or orbax step) jaxtl cannot load as asked; names the file or weight."""


class NonFiniteError(JaxtlError, FloatingPointError):
    """A loss or gradient became NaN/inf; the run stops without saving that state."""


class Stopped(JaxtlError):
    """The run was asked to stop (SIGTERM/SIGINT) and saved a checkpoint."""

    def __init__(self, step: int, signum: int):
        super().__init__(
            f"stopped by signal {signal.Signals(signum).name} at step {step}; checkpoint saved. "
            "Run the same command again to resume."
        )
        self.step, self.signum = step, signum
