"""Host memory for XLA:CPU steps: glibc's malloc backs large blocks with transparent huge pages.

Each run of a compiled XLA:CPU step allocates its temporaries as one block (645 MB for the
demo's MiniLM train step at 32 x 64) and frees it at the end. glibc serves a block that large with
a fresh ``mmap``, so every step faults in ~189,000 new 4 KB pages, each zeroed by the kernel. With
the glibc tunable ``glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc asks for transparent huge
pages (``MADV_HUGEPAGE``) on those blocks: ~700 faults per step, the step 1.26x faster at 32 x 64
and 1.20x at 32 x 128, the same peak memory (bench/RESULTS.md §14b). PyTorch's steps do not
gain from it (§14c).

glibc reads tunables only when a process starts, so the ``jaxtl`` command re-executes itself
once, first thing, with the tunable added to ``GLIBC_TUNABLES`` (:func:`reexec_with_huge_pages`;
the process keeps its PID, arguments and open files). It does so only on Linux with glibc >= 2.35
and transparent huge pages in ``always`` or ``madvise`` mode, never when ``GLIBC_TUNABLES``
already sets the tunable, and not at all with ``JAXTL_HUGE_PAGES=off``. Code that imports jaxtl
(a notebook, your own script) gets the same by starting Python with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its environment.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "JAXTL_HUGE_PAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_MODES = ("always", "madvise")  # the modes in which MADV_HUGEPAGE takes effect


def switched_off(setting: str) -> bool:
    """Whether an environment switch's value means off (``JAXTL_HUGE_PAGES``,
    ``JAXTL_COMPILATION_CACHE``)."""
    return setting.lower() in ("off", "0", "false", "no")


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    if name != "glibc":
        return None
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _thp_mode() -> str | None:
    """The bracketed mode of ``THP_SETTING`` (``always``, ``madvise`` or ``never``), None without it."""
    try:
        with open(THP_SETTING) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_page_environ(environ: dict[str, str], *, platform: str, glibc: tuple[int, int] | None,
                      thp_mode: str | None) -> dict[str, str] | None:
    """The environment to re-execute with so malloc uses huge pages, or None to go on as is."""
    if switched_off(environ.get(SWITCH, "")):
        return None
    if not platform.startswith("linux") or glibc is None or glibc < (2, 35):
        return None
    if thp_mode not in THP_MODES:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:  # set already: by us before the exec, or by the user
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def launched_as_jaxtl() -> bool:
    """Whether this process is the ``jaxtl`` command (its script, or ``python -m jaxtl.cli``), so
    re-running its command line from the start repeats nothing but the command itself."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "jaxtl.cli":
        return True
    return os.path.basename(getattr(main, "__file__", None) or "") in ("jaxtl", "jaxtl.exe")


def reexec_with_huge_pages() -> None:
    """Replace this process with itself under :data:`TUNABLE` where that helps (see the module
    docstring); returns without doing anything otherwise, and always when the process is not the
    ``jaxtl`` command itself (code that imported jaxtl is never restarted)."""
    env = huge_page_environ(dict(os.environ), platform=sys.platform, glibc=_glibc_version(),
                            thp_mode=_thp_mode())
    if env is None or not getattr(sys, "orig_argv", None) or not launched_as_jaxtl():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def huge_pages_active() -> bool:
    """Whether this process started with glibc's malloc told to use transparent huge pages."""
    return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":") and _thp_mode() in THP_MODES
