"""The process start time every ``wall_s`` and ``first_step_s`` is measured from."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.skipif(not Path("/proc/uptime").exists(), reason="needs Linux /proc")
def test_process_start_time_is_when_the_process_started():
    # /proc/stat's btime is whole seconds: a start computed from it was up to 1 s early (0.94 s
    # on the benchmark host), so every start-up jaxtl reported read that much too long.
    code = ("import time; from jaxtl import runlog; "
            "print(repr(runlog.process_start_time()), repr(time.time()))")
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    start, child_now = (float(x) for x in out.stdout.split())
    # The kernel counts the start in 10 ms ticks and /proc/uptime has 10 ms resolution.
    assert before - 0.03 <= start <= child_now, (before, start, child_now)
    assert start - before < 0.5, "the start is the fork, not the import of jaxtl"
