"""Fine-tuning data: labelled text (or text pairs) from files or HF datasets, tokenized and batched.

    data = load_classification_data(cfg.data, tokenizer, max_positions=512)
    batch = train_batch(data.train, step, batch_size=32, seed=0, bucket_sizes=cfg.data.bucket_sizes,
                        max_seq_length=cfg.data.max_seq_length, pad_id=tokenizer.pad_token_id)

Sources are local ``.csv``, ``.tsv``, ``.json`` (a list of records, a dict of columns, or JSON
Lines) and ``.jsonl`` files, ``asset:`` names, or an HF ``datasets`` name or folder. Files are
parsed with the standard library: strict UTF-8, and every problem is a :class:`DataError` that
names the file, line, column or value.

Batching is a pure function of ``(seed, step)`` — a resumed run sees exactly the batches it would
have seen — and pads only to one of a few bucket lengths, so a jitted step compiles a handful of
shapes. Every process computes the same global batch plan and keeps its own slice of rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtl import assets
from jaxtl.config import FinetuneDataConfig
from jaxtl.errors import DataError

# Sortish bucketing sorts windows of this many batches by length: batches of similar lengths pad
# little, while the window keeps enough randomness in which examples share a batch.
SORT_WINDOW_BATCHES = 50
_TOKENIZE_CHUNK = 1024  # examples per tokenizer call: fast, with bounded memory
_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


@dataclasses.dataclass
class Split:
    """One tokenized split. Example i is ``input_ids[i]`` (int32 [len_i], with [CLS]/[SEP])."""

    name: str  # "train" / "validation" / "test" / "predict"
    source: str  # file path or dataset name, for messages
    input_ids: list[np.ndarray]  # int32 ids per example, truncated to max_seq_length
    token_type_ids: list[np.ndarray]  # int32, same lengths as input_ids
    # int32 label ids [N] (float32 targets for regression); None without a label column (predict).
    labels: np.ndarray | None
    texts: list[tuple[str, str | None]]  # (text, text_pair) per example, for prediction output
    # Lengths and the current epoch's batch plan, computed once (not part of the data).
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass
class ClassificationData:
    train: Split | None
    validation: Split | None
    test: Split | None
    labels: tuple[str, ...]  # label names in id order; regression: (label_column,)
    regression: bool


# ---------------------------------------------------------------------------- reading tables


@dataclasses.dataclass
class _Table:
    """Raw columns of one source, before any checks on their values."""

    source: str
    columns: dict[str, list]
    unit: str  # what `where` counts: "line", "record" or "row"
    where: list[int]  # per row, its line/record/row number in the source (1-based)
    class_names: dict[str, list[str]]  # HF ClassLabel columns: names in id order

    def __len__(self) -> int:
        return len(self.where)

    def column(self, name: str, what: str) -> list:
        if name not in self.columns:
            raise DataError(
                f"{self.source}: no column {name!r} (data.{what}); available columns: "
                + ", ".join(repr(c) for c in self.columns)
            )
        return self.columns[name]

    def at(self, i: int) -> str:
        return f"{self.source}, {self.unit} {self.where[i]}"


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
            f"(line {line}); re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


def _read_delimited(path: Path, text: str, delimiter: str) -> _Table:
    # TSV files (GLUE's among them) carry bare quote characters inside text, so tabs are the
    # only structure there; CSV uses standard quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = [name.strip() for name in next(reader)]
    columns: dict[str, list] = {name: [] for name in header}
    if len(columns) != len(header):
        raise DataError(f"{path}: the header repeats a column name: {header}")
    where = []
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            kind = "tab" if delimiter == "\t" else "comma"
            raise DataError(
                f"{path}, line {reader.line_num}: {len(row)} fields but the header has "
                f"{len(header)} ({', '.join(header)}); quote text that contains a {kind}"
            )
        for name, value in zip(header, row, strict=True):
            columns[name].append(value)
        where.append(reader.line_num)
    if not where:
        raise DataError(f"{path}: the file has a header but no rows")
    return _Table(str(path), columns, "line", where, {})


def _records_table(path: Path, records: list, unit: str, where: list[int]) -> _Table:
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
    return _Table(str(path), columns, unit, where, {})


def _read_json_lines(path: Path, text: str) -> _Table:
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


def _read_json(path: Path, text: str) -> _Table:
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
        return _Table(str(path), dict(document), "record", list(range(1, n + 1)), {})
    raise DataError(
        f"{path}: expected a JSON list of records, a dict of column lists, or JSON Lines"
    )


def _read_file(path_or_asset: str) -> _Table:
    path = Path(assets.resolve(path_or_asset))
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use one of {', '.join(_SUFFIXES)}"
        )
    text = _decode(path)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text, "," if suffix == ".csv" else "\t")
    if suffix == ".jsonl":
        return _read_json_lines(path, text)
    return _read_json(path, text)


class _HubDataset:
    """An HF `datasets` dataset, loaded once; splits become tables on demand."""

    def __init__(self, name: str, config: str | None):
        import datasets  # slow to import; only hub users pay for it

        self.name = f"{name}/{config}" if config else name
        try:
            self.splits = datasets.load_dataset(name, config)
        except Exception as e:  # offline, unknown name, missing config: all reported the same way
            raise DataError(
                f"could not load dataset {self.name!r} with HF datasets ({type(e).__name__}: {e}). "
                "Offline? Give local files instead: data.train_file (CSV/TSV/JSON/JSONL)."
            ) from None

    def has(self, split: str) -> bool:
        return split in self.splits

    def table(self, split: str, what: str) -> _Table:
        import datasets

        if split not in self.splits:
            raise DataError(
                f"dataset {self.name!r} has no split {split!r} (data.{what}); splits: "
                + ", ".join(self.splits)
            )
        ds = self.splits[split]
        class_names = {
            name: list(feature.names)
            for name, feature in ds.features.items()
            if isinstance(feature, datasets.ClassLabel)
        }
        columns = {name: list(ds[name]) for name in ds.column_names}
        return _Table(
            f"{self.name}[{split}]", columns, "row", list(range(1, len(ds) + 1)), class_names
        )


# ---------------------------------------------------------------------------- rows and labels


@dataclasses.dataclass
class _Rows:
    """Checked texts and raw labels of one split (label names, or floats for regression)."""

    table: _Table
    indices: list[int]  # rows of `table` in this split
    texts: list[str]
    pairs: list[str] | None
    labels: list | None  # None: no label column, or every label hidden (HF -1)

    def subset(self, keep: Sequence[int]) -> _Rows:
        return _Rows(
            self.table,
            [self.indices[i] for i in keep],
            [self.texts[i] for i in keep],
            None if self.pairs is None else [self.pairs[i] for i in keep],
            None if self.labels is None else [self.labels[i] for i in keep],
        )


def _text_column(table: _Table, column: str, what: str) -> list[str]:
    values = table.column(column, what)
    texts = []
    for i, value in enumerate(values):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{table.at(i)}: column {column!r} is empty ({value!r})")
        texts.append(value)
    return texts


def _label_key(value: Any) -> str | None:
    """A label as a string name: 1, 1.0 and "1" are all "1"; None/"" is None."""
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    value = str(value).strip()
    return value or None


def _read_labels(table: _Table, cfg: FinetuneDataConfig, required: bool) -> list | None:
    column = cfg.label_column
    if column not in table.columns and not required:
        return None
    values = table.column(column, "label_column")
    names = table.class_names.get(column)
    if names is not None:  # HF ClassLabel ints; -1 marks a hidden label (GLUE test splits)
        if all(v == -1 for v in values):
            return None
        values = [names[v] if v >= 0 else None for v in values]
    out = []
    for i, value in enumerate(values):
        if cfg.regression:
            try:
                target = float(value)
            except (TypeError, ValueError):
                target = math.nan
            if not math.isfinite(target):
                raise DataError(
                    f"{table.at(i)}: column {column!r} holds {value!r}, not a number "
                    "(data.regression is true)"
                )
            out.append(target)
        else:
            key = _label_key(value)
            if key is None:
                raise DataError(f"{table.at(i)}: column {column!r} is empty ({value!r})")
            out.append(key)
    return out


def _rows(table: _Table, cfg: FinetuneDataConfig, labels_required: bool) -> _Rows:
    texts = _text_column(table, cfg.text_column, "text_column")
    pairs = None
    if cfg.text_pair_column is not None:
        pairs = _text_column(table, cfg.text_pair_column, "text_pair_column")
    labels = _read_labels(table, cfg, labels_required)
    return _Rows(table, list(range(len(table))), texts, pairs, labels)


def _sort_label_names(names: set[str]) -> tuple[str, ...]:
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return tuple(sorted(names, key=int))  # 2 before 10
    return tuple(sorted(names))


def _label_names(
    train: _Rows, cfg: FinetuneDataConfig, labels: tuple[str, ...] | None
) -> tuple[str, ...]:
    """Label names in id order: the checkpoint's, data.labels, the dataset's, or sorted distinct."""
    if cfg.regression:
        return tuple(labels) if labels else (cfg.label_column,)
    configured = None if cfg.labels is None else tuple(_label_key(x) for x in cfg.labels)
    if configured is not None and (None in configured or len(set(configured)) != len(configured)):
        raise DataError(f"data.labels={cfg.labels!r} must be distinct, non-empty names")
    if labels is not None:
        labels = tuple(str(x) for x in labels)
        if configured is not None and configured != labels:
            raise DataError(
                f"data.labels={list(configured)} differs from the checkpoint's labels "
                f"{list(labels)} (same names in the same order are needed: ids must agree)"
            )
        return labels
    if configured is not None:
        return configured
    class_names = train.table.class_names.get(cfg.label_column)
    if class_names is not None:
        return tuple(class_names)
    if train.labels is None:
        raise DataError(f"{train.table.source}: the training labels are hidden (all -1)")
    names = _sort_label_names(set(train.labels))
    if len(names) < 2:
        raise DataError(
            f"{train.table.source}: column {cfg.label_column!r} has a single value {names[0]!r}; "
            "classification needs at least 2 labels (set data.regression for numeric targets)"
        )
    return names


def _label_ids(rows: _Rows, names: tuple[str, ...], cfg: FinetuneDataConfig) -> np.ndarray | None:
    if rows.labels is None:
        return None
    if cfg.regression:
        return np.asarray(rows.labels, np.float32)
    index = {name: i for i, name in enumerate(names)}
    ids = np.empty(len(rows.labels), np.int32)
    for i, key in enumerate(rows.labels):
        if key not in index:
            raise DataError(
                f"{rows.table.at(rows.indices[i])}: label {key!r} in column {cfg.label_column!r} "
                f"is not one of the training labels {list(names)}"
            )
        ids[i] = index[key]
    return ids


# ---------------------------------------------------------------------------- tokenizing


def _check_lengths(cfg: FinetuneDataConfig, max_positions: int) -> None:
    if cfg.max_seq_length > max_positions:
        raise DataError(
            f"data.max_seq_length={cfg.max_seq_length} is longer than the model's "
            f"max_position_embeddings={max_positions}"
        )


def _split(name: str, source: str, rows: _Rows, label_ids, tokenizer, max_seq_length: int) -> Split:
    input_ids, token_type_ids = [], []
    for start in range(0, len(rows.texts), _TOKENIZE_CHUNK):
        stop = start + _TOKENIZE_CHUNK
        encoded = tokenizer(
            rows.texts[start:stop],
            None if rows.pairs is None else rows.pairs[start:stop],
            truncation=True,
            max_length=max_seq_length,
        )
        ids = encoded["input_ids"]
        types = encoded.get("token_type_ids") or [[0] * len(x) for x in ids]  # e.g. RoBERTa
        input_ids.extend(np.asarray(x, np.int32) for x in ids)
        token_type_ids.extend(np.asarray(x, np.int32) for x in types)
    pairs = rows.pairs if rows.pairs is not None else [None] * len(rows.texts)
    return Split(
        name,
        source,
        input_ids,
        token_type_ids,
        label_ids,
        list(zip(rows.texts, pairs, strict=True)),
    )


def _carve(n: int, cfg: FinetuneDataConfig, source: str) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) row indices, held out with `split_seed`; each in file order."""

    def count(fraction):
        return 0 if fraction <= 0 else max(1, round(n * fraction))

    n_val, n_test = count(cfg.validation_fraction), count(cfg.test_fraction)
    if n_val + n_test >= n:
        raise DataError(
            f"{source}: {n} examples are too few to hold out data.validation_fraction="
            f"{cfg.validation_fraction} and data.test_fraction={cfg.test_fraction}"
        )
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    return (
        sorted(perm[n_val + n_test :].tolist()),
        sorted(perm[:n_val].tolist()),
        sorted(perm[n_val : n_val + n_test].tolist()),
    )


def load_classification_data(
    cfg: FinetuneDataConfig,
    tokenizer,
    *,
    max_positions: int,
    labels: tuple[str, ...] | None = None,
) -> ClassificationData:
    """Read, check and tokenize the train/validation/test data that `cfg` names.

    Args:
      cfg: the ``data`` section of a fine-tuning config.
      tokenizer: an HF fast tokenizer (``AutoTokenizer.from_pretrained``).
      max_positions: the model's ``max_position_embeddings``; ``cfg.max_seq_length`` must fit.
      labels: label names in id order from a checkpoint's head; they fix the id mapping.

    A validation or test split comes from ``validation_file``/``test_file``, else from the
    dataset's ``validation_split``/``test_split``, else is carved off the training data with
    ``validation_fraction``/``test_fraction`` and ``split_seed``; with none of these it is None.
    Label names come from ``labels``, ``cfg.labels``, the dataset's ClassLabel names, or the sorted
    distinct labels of the whole training source (numerically sorted when they are integers).
    """
    _check_lengths(cfg, max_positions)
    hub = None
    if cfg.train_file is not None:
        train_table = _read_file(cfg.train_file)
    elif cfg.dataset is not None:
        hub = _HubDataset(cfg.dataset, cfg.dataset_config)
        train_table = hub.table(cfg.train_split, "train_split")
    else:
        raise DataError("no training data: set data.train_file or data.dataset")
    train_rows = _rows(train_table, cfg, labels_required=True)

    def explicit(file, split, what, optional_default):
        if file is not None:
            return _rows(_read_file(file), cfg, labels_required=True)
        if hub is not None and split is not None:
            if hub.has(split) or split != optional_default:
                return _rows(hub.table(split, what), cfg, labels_required=True)
        return None

    validation_rows = explicit(
        cfg.validation_file, cfg.validation_split, "validation_split", "validation"
    )
    test_rows = explicit(cfg.test_file, cfg.test_split, "test_split", None)
    names = _label_names(train_rows, cfg, labels)

    train_source = train_table.source
    validation_source = validation_rows.table.source if validation_rows else None
    test_source = test_rows.table.source if test_rows else None
    carve_val = validation_rows is None and cfg.validation_fraction > 0
    carve_test = test_rows is None and cfg.test_fraction > 0
    if carve_val or carve_test:
        carving = dataclasses.replace(
            cfg,
            validation_fraction=cfg.validation_fraction if carve_val else 0.0,
            test_fraction=cfg.test_fraction if carve_test else 0.0,
        )
        keep, held_val, held_test = _carve(len(train_rows.texts), carving, train_source)
        held = f"held out of {train_source} with data.split_seed={cfg.split_seed}"
        if carve_val:
            validation_rows = train_rows.subset(held_val)
            validation_source = f"validation_fraction={cfg.validation_fraction} {held}"
        if carve_test:
            test_rows = train_rows.subset(held_test)
            test_source = f"test_fraction={cfg.test_fraction} {held}"
        train_rows = train_rows.subset(keep)

    def tokenized(name, rows, source):
        if rows is None:
            return None
        return _split(
            name, source, rows, _label_ids(rows, names, cfg), tokenizer, cfg.max_seq_length
        )

    return ClassificationData(
        train=tokenized("train", train_rows, train_source),
        validation=tokenized("validation", validation_rows, validation_source),
        test=tokenized("test", test_rows, test_source),
        labels=names,
        regression=cfg.regression,
    )


def load_prediction_split(
    path: str,
    cfg: FinetuneDataConfig,
    tokenizer,
    *,
    max_positions: int,
    labels: tuple[str, ...] | None,
) -> Split:
    """Tokenize a file to predict on; its label column is optional.

    ``Split.labels`` is set when the file has ``cfg.label_column`` and the labels can be mapped
    (regression, or ``labels`` given — unknown names are a DataError); otherwise None.
    """
    _check_lengths(cfg, max_positions)
    table = _read_file(path)
    rows = _rows(table, cfg, labels_required=False)
    label_ids = None
    if rows.labels is not None and (cfg.regression or labels is not None):
        label_ids = _label_ids(rows, tuple(str(x) for x in labels or ()), cfg)
    return _split("predict", table.source, rows, label_ids, tokenizer, cfg.max_seq_length)


# ---------------------------------------------------------------------------- batching


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped; a new permutation each epoch)."""
    steps = num_examples // batch_size
    if steps == 0:
        raise DataError(
            f"{num_examples} training examples are fewer than one batch of "
            f"train.batch_size={batch_size}"
        )
    return steps


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    """Batches :func:`eval_batches` yields: every example once, the last batch padded."""
    return -(-num_examples // batch_size)


def _lengths(split: Split) -> np.ndarray:
    if "lengths" not in split._cache:
        split._cache["lengths"] = np.fromiter(
            (len(x) for x in split.input_ids), np.int64, len(split)
        )
    return split._cache["lengths"]


def _buckets(bucket_sizes, max_seq_length: int) -> list[int]:
    return sorted({int(b) for b in bucket_sizes if b <= max_seq_length} | {max_seq_length})


def _local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    if batch_size % process_count:
        raise DataError(
            f"batch size {batch_size} is not divisible by the {process_count} processes"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside 0..{process_count - 1}")
    rows = batch_size // process_count
    return slice(process_index * rows, (process_index + 1) * rows)


def _assemble(
    split: Split, rows_B: np.ndarray, buckets: list[int], pad_id: int, local: slice
) -> dict[str, np.ndarray]:
    """Pad global batch rows (-1: a padding row) to one bucket; keep this process's slice."""
    lengths = _lengths(split)
    real = rows_B[rows_B >= 0]
    longest = int(lengths[real].max()) if len(real) else 1
    if longest > buckets[-1]:
        raise DataError(
            f"{split.source}: an example has {longest} tokens, more than max_seq_length="
            f"{buckets[-1]} (tokenize and batch with the same data.max_seq_length)"
        )
    seq_len = next(b for b in buckets if b >= longest)  # one of a few shapes for the whole batch
    rows_b = rows_B[local]
    b = len(rows_b)
    input_ids = np.full((b, seq_len), pad_id, np.int32)
    attention_mask = np.zeros((b, seq_len), np.int32)
    token_type_ids = np.zeros((b, seq_len), np.int32)
    regression = split.labels is not None and split.labels.dtype == np.float32
    labels = np.zeros(b, np.float32 if regression else np.int32)
    weight = (rows_b >= 0).astype(np.float32)
    for i, row in enumerate(rows_b):
        if row < 0:
            # A padding row attends to its first position only, so no softmax runs over an
            # all-masked row (NaN on some attention kernels); its weight of 0 drops it.
            attention_mask[i, 0] = 1
            continue
        n = lengths[row]
        input_ids[i, :n] = split.input_ids[row]
        token_type_ids[i, :n] = split.token_type_ids[row]
        attention_mask[i, :n] = 1
        if split.labels is not None:
            labels[i] = split.labels[row]
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "example_weight": weight,
    }
    if split.labels is not None:
        batch["labels"] = labels
    return batch


def _epoch_plan(split: Split, seed: int, epoch: int, batch_size: int) -> np.ndarray:
    """Global example indices [steps_per_epoch, batch_size] for one epoch (cached per epoch)."""
    key = ("plan", seed, batch_size)
    cached = split._cache.get(key)
    if cached is not None and cached[0] == epoch:
        return cached[1]
    n = len(split)
    steps = steps_per_epoch(n, batch_size)
    rng = np.random.default_rng([seed, epoch])
    # Drop the remainder before sorting, so the examples left out are random, not the longest.
    perm = rng.permutation(n)[: steps * batch_size]
    lengths = _lengths(split)
    window = batch_size * SORT_WINDOW_BATCHES
    sortish = np.concatenate(
        [
            chunk[np.argsort(lengths[chunk], kind="stable")]
            for chunk in np.split(perm, range(window, len(perm), window))
        ]
    )
    plan = sortish.reshape(steps, batch_size)[rng.permutation(steps)]
    split._cache[key] = (epoch, plan)  # only the current epoch: memory stays O(examples)
    return plan


def train_batch(
    split: Split,
    step: int,
    *,
    batch_size: int,
    seed: int,
    bucket_sizes,
    max_seq_length: int,
    pad_id: int,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """The training batch of global step ``step``: a pure function of ``(seed, step)``.

    Epoch ``step // steps_per_epoch`` shuffles with ``default_rng([seed, epoch])``; windows of
    ``50 * batch_size`` examples are sorted by length and cut into batches, whose order is then
    shuffled. The global batch (``batch_size`` rows) is padded to the smallest bucket length that
    fits its longest row, and this process gets rows ``[p*b, (p+1)*b)``, ``b = batch_size //
    process_count``.

    Returns int32 ``input_ids``, ``attention_mask``, ``token_type_ids`` [b, L]; ``labels`` [b]
    (int32, float32 for regression); ``example_weight`` [b] float32 ones.
    """
    if split.labels is None:
        raise DataError(f"{split.source}: training needs labels (column missing or hidden)")
    local = _local_rows(batch_size, process_index, process_count)
    epoch, index = divmod(step, steps_per_epoch(len(split), batch_size))
    rows_B = _epoch_plan(split, seed, epoch, batch_size)[index]
    return _assemble(split, rows_B, _buckets(bucket_sizes, max_seq_length), pad_id, local)


def eval_batches(
    split: Split,
    *,
    batch_size: int,
    bucket_sizes,
    max_seq_length: int,
    pad_id: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, shortest first (tight padding), in global batches.

    The last batch is filled up with rows of ``pad_id`` whose ``example_weight`` is 0 and
    ``index`` -1. Keys as :func:`train_batch` (``labels`` only when the split has labels) plus
    ``index`` [b] int32: each row's example index in the split. Each process gets its slice of
    rows, as in :func:`train_batch`; there are :func:`num_eval_batches` batches.
    """
    local = _local_rows(batch_size, process_index, process_count)
    buckets = _buckets(bucket_sizes, max_seq_length)
    order = np.argsort(_lengths(split), kind="stable")
    for start in range(0, len(order), batch_size):
        rows_B = np.full(batch_size, -1, np.int64)
        chunk = order[start : start + batch_size]
        rows_B[: len(chunk)] = chunk
        batch = _assemble(split, rows_B, buckets, pad_id, local)
        batch["index"] = rows_B[local].astype(np.int32)
        yield batch
