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


ENTRY = ("import time, jaxtl.cli as cli\n"
         "from jaxtl import runlog\n"
         "cli.main = lambda: print(repr(runlog.process_start_time()), repr(time.time()))\n"
         "cli.entry()\n")


def _run_after(delay: float, code: str, **env) -> tuple[float, float, float]:
    """``bash -c "sleep DELAY; exec python -c CODE"``: a process that was a shell for DELAY
    seconds before it became Python. Returns (parent's clock at spawn, start, child's clock)."""
    import os
    import shlex

    before = time.time()
    out = subprocess.run(["bash", "-c", f"sleep {delay}; exec {shlex.quote(sys.executable)} -c "
                          + shlex.quote(code)], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    start, child_now = (float(x) for x in out.stdout.split()[-2:])
    return before, start, child_now


@pytest.mark.skipif(not Path("/proc/uptime").exists(), reason="needs Linux /proc")
def test_start_is_when_the_jaxtl_command_began_in_a_process_that_was_a_shell_before():
    # `bash -c "pip install ... && jaxtl finetune ..."` execs jaxtl in the shell's own process,
    # forked minutes earlier: the README's demo logged "first step finished 127.0 s after the
    # process started" for a 13 s start-up.
    before, start, child_now = _run_after(3, ENTRY)
    assert before + 2.9 <= start <= child_now, (before, start, child_now)
    # A value inherited from another process (its pid) is replaced by this one's.
    before, start, child_now = _run_after(3, ENTRY, JAXTL_ENTRY_TIME="1:0.0")
    assert before + 2.9 <= start <= child_now, (before, start, child_now)


@pytest.mark.skipif(not Path("/proc/uptime").exists(), reason="needs Linux /proc")
def test_an_inherited_entry_time_of_another_process_is_ignored():
    code = "import time; from jaxtl import runlog; print(repr(runlog.process_start_time()), repr(time.time()))"
    # Another process's mark from while this one was still a shell (2.5 s > ENTRY_GAP_S after
    # its fork): taken for this process's own, the start would move 2.5 s late.
    before, start, _ = _run_after(3, code, JAXTL_ENTRY_TIME=f"1:{time.time() + 2.5!r}")
    assert before - 0.03 <= start < before + 0.5, (before, start)  # the fork
