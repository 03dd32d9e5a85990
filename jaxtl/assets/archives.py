"""Safe unpacking of what was fetched: wheels, zips and (compressed) tars such as sdists, and the
data archive of a Debian package.

A member that would land outside the target folder (an absolute path, ``..``, a Windows drive, a
link pointing out) or a device file is refused with the member named; a damaged archive is an
``AssetError`` naming the file. Nothing unpacked is run.
"""

from __future__ import annotations

import io
import lzma
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

from jaxtl.errors import AssetError

# What reading a damaged archive raises (OSError: also a full disk while writing it out).
_CORRUPT_ARCHIVE = (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, OSError)


def _escapes(name: str) -> bool:
    """Whether an archive member named ``name`` would be written outside the target folder."""
    return (
        name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", name) is not None  # a Windows drive
        or ".." in re.split(r"[\\/]", name)
    )


def _refuse(archive: str, name: str, why: str = "") -> AssetError:
    return AssetError(
        f"{archive} holds the member {name!r}, which would be written outside the folder it is "
        f"unpacked into{why}; refusing to unpack it"
    )


def unpack(archive: Path, out: Path) -> None:
    """Unpack a wheel or zip, or a (compressed) tar such as an sdist, into ``out``."""
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if _escapes(name):
                        raise _refuse(archive.name, name)
                zf.extractall(out)
        elif archive.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            with tarfile.open(archive) as tf:
                _extract_tar(tf, out, archive.name)
        else:
            raise AssetError(f"{archive.name}: not an archive jaxtl unpacks (.whl, .zip, .tar.*)")
    except (zipfile.BadZipFile, *_CORRUPT_ARCHIVE) as e:
        raise AssetError(f"cannot unpack {archive.name}: {e}") from e


def _extract_tar(tf: tarfile.TarFile, out: Path, archive: str) -> None:
    """Extract every member of ``tf`` into ``out``, refusing one that would land or link outside.

    Checked here by name first, so the message says which member; tarfile's "data" filter
    (Python 3.10.12+, 3.11.4+) then also refuses device files and links leaving ``out``.
    """
    for member in tf.getmembers():
        if _escapes(member.name):
            raise _refuse(archive, member.name)
        if member.issym() or member.islnk():
            # A symlink's target is relative to its folder, a hard link's to the archive root.
            base = posixpath.dirname(member.name) if member.issym() else ""
            target = posixpath.normpath(posixpath.join(base, member.linkname))
            if _escapes(target):
                raise _refuse(archive, member.name, f" (a link to {member.linkname!r})")
        if member.isdev():
            raise AssetError(f"{archive} holds the device file {member.name!r}; refusing it")
    try:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(out, filter="data")
        else:
            tf.extractall(out)
    except tarfile.FilterError as e:
        raise AssetError(f"{archive}: {e}; refusing to unpack it") from e



# ---------------------------------------------------------------------------- Debian packages

# data.tar compressions Python's tarfile reads; others (.zst, .lzma) go to dpkg-deb.
_TARFILE_COMPRESSIONS = ("", ".gz", ".xz", ".bz2")


def extract_deb(deb: Path, out: Path) -> None:
    """Unpack a .deb's data archive (an ``ar`` archive holding ``data.tar.*``) into ``out``."""
    corrupt = f"{deb.name} is not a valid Debian package"
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise AssetError(f"{corrupt} (no ar header)")
        while header := f.read(60):
            try:
                name = header[:16].decode("ascii").strip().rstrip("/")
                size = int(header[48:58])
            except (UnicodeDecodeError, ValueError):
                raise AssetError(f"{corrupt} (a damaged ar member header)") from None
            if name.startswith("data.tar"):
                data = f.read(size)
                if len(data) != size:
                    raise AssetError(f"{corrupt} ({name} is cut short)")
                break
            f.seek(size + size % 2, os.SEEK_CUR)  # members are 2-byte aligned
        else:
            raise AssetError(f"{corrupt} (no data.tar.* member)")
    source = f"{deb.name} ({name})"
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data))
    except tarfile.TarError as e:
        if name[len("data.tar") :] in _TARFILE_COMPRESSIONS:
            raise AssetError(f"{corrupt}: cannot read {name}: {e}") from e
        _dpkg_extract(deb, out, f"{name}: {e}")  # e.g. data.tar.zst before Python 3.14
        return
    try:
        with tf:
            _extract_tar(tf, out, source)
    except _CORRUPT_ARCHIVE as e:
        raise AssetError(f"{corrupt}: cannot unpack {name}: {e}") from e


def _dpkg_extract(deb: Path, out: Path, why: str) -> None:
    """Unpack ``deb`` with ``dpkg-deb -x``, for data archives Python's tarfile cannot read."""
    if shutil.which("dpkg-deb") is None:
        raise AssetError(f"cannot unpack {deb.name} without dpkg-deb, which is missing ({why})")
    try:
        cmd = ["dpkg-deb", "-x", str(deb), str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise AssetError(f"could not run dpkg-deb to unpack {deb.name}: {e}") from e
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-2:]
        raise AssetError(f"`dpkg-deb -x {deb.name}` failed: {' / '.join(detail) or 'no output'}")
