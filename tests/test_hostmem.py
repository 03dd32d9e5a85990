"""The ``jaxtl`` command restarts itself once with glibc's malloc on transparent huge pages
(jaxtl.hostmem): when it does, when it must not, and that the restarted command is the same
command (arguments, exit status, messages)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxtl import hostmem

LINUX = dict(platform="linux", glibc=(2, 36), thp_mode="madvise")


def test_sets_the_tunable_where_it_helps():
    env = hostmem.huge_page_environ({"PATH": "/bin"}, **LINUX)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert hostmem.huge_page_environ({}, **{**LINUX, "thp_mode": "always"})["GLIBC_TUNABLES"] == (
        "glibc.malloc.hugetlb=1")


def test_keeps_the_users_other_tunables():
    env = hostmem.huge_page_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ, overrides", [
    ({"JAXTL_HUGE_PAGES": "off"}, {}),                                  # switched off
    ({"JAXTL_HUGE_PAGES": "0"}, {}),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, {}),                # already restarted
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),                # the user's own choice
    ({}, {"platform": "darwin"}),
    ({}, {"glibc": None}),                                              # musl, or no glibc
    ({}, {"glibc": (2, 34)}),                                           # before the tunable
    ({}, {"thp_mode": "never"}),
    ({}, {"thp_mode": None}),                                           # no THP in the kernel
])
def test_goes_on_as_is_otherwise(environ, overrides):
    assert hostmem.huge_page_environ(environ, **{**LINUX, **overrides}) is None


def test_reads_the_kernels_mode(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(hostmem, "THP_SETTING", str(setting))
    assert hostmem._thp_mode() == "madvise"
    setting.write_text("[always] madvise never\n")
    assert hostmem._thp_mode() == "always"
    monkeypatch.setattr(hostmem, "THP_SETTING", str(tmp_path / "missing"))
    assert hostmem._thp_mode() is None


def test_code_that_imports_jaxtl_is_never_restarted():
    """Only the command itself restarts: a script calling the entry point keeps its process."""
    code = ("import os; from jaxtl import hostmem; hostmem.reexec_with_huge_pages(); "
            "print('still here', os.getpid(), os.environ.get('GLIBC_TUNABLES'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"})
    assert out.stdout.startswith("still here") and out.stdout.split()[-1] == "None"


def test_the_command_restarts_with_huge_pages_and_keeps_its_arguments(tmp_path):
    """Through the CLI: the restarted process logs that it runs on huge pages (and with the switch
    off does not), and reaches the same refusal with the same exit status: here a workdir that
    holds another run, which stops the command before any data or weights are read."""
    if hostmem.huge_page_environ({}, platform=sys.platform, glibc=hostmem._glibc_version(),
                                 thp_mode=hostmem._thp_mode()) is None:
        pytest.skip("this host has no glibc >= 2.35 with transparent huge pages")
    config = tmp_path / "run.yaml"
    config.write_text("task: finetune\nmodel:\n  pretrained: /nonexistent\n"
                      "data:\n  train_file: /nonexistent.csv\n")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.yaml").write_text("task: finetune\nmodel:\n  pretrained: /other\n")
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.SWITCH)}
    results = {}
    for switch in ("on", "off"):
        proc = subprocess.run(
            [sys.executable, "-m", "jaxtl.cli", "finetune", "--config", str(config),
             "--workdir", str(tmp_path / "w")],
            capture_output=True, text=True, env={**base, hostmem.SWITCH: switch},
            cwd=Path(__file__).resolve().parent.parent)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("jaxtl: error:")]
        assert len(errors) == 1 and "holds a run with another config" in errors[0]
        assert "/other -> /nonexistent" in errors[0]
        results[switch] = "transparent huge pages" in proc.stderr
    assert results == {"on": True, "off": False}
