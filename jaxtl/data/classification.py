"""Fine-tuning data: labelled text (or text pairs) → checked labels → tokenized splits.

    data = load_classification_data(cfg.data, tokenizer, max_positions=512)
    train = ClassificationBatcher(data.train, batch_size=32, seed=0, bucket_sizes=[32, 64, 128])

Sources are tables (:mod:`jaxtl.data.tables`: local CSV/TSV/JSON/JSONL files, ``asset:`` names,
or an HF ``datasets`` name or folder). Here their values are checked (non-empty texts; labels
present, numeric for regression, known to the training data for validation/test; a set of
names per row for multi-label), mapped to label ids (multi-hot rows for multi-label) and
tokenized once to ``data.max_seq_length``; a :class:`Split` records that length and the
tokenizer's pad id, so batching (:mod:`jaxtl.data.batching`) never asks for them again. Every
problem is a :class:`DataError` that names the file, line, column or value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtl.config import FinetuneDataConfig
from jaxtl.data.sources import HubDataset
from jaxtl.data.tables import Table, hub_table, read_table
from jaxtl.errors import DataError

_TOKENIZE_CHUNK = 1024  # examples per tokenizer call: fast, with bounded memory


@dataclasses.dataclass
class Split:
    """One tokenized split. Example i is ``input_ids[i]`` (int32 [len_i], with [CLS]/[SEP])."""

    name: str  # "train" / "validation" / "test" / "predict"
    source: str  # file path or dataset name, for messages
    input_ids: list[np.ndarray]  # int32 ids per example, truncated to max_seq_length
    token_type_ids: list[np.ndarray]  # int32, same lengths as input_ids
    # int32 label ids [N] (float32 targets [N] for regression, float32 multi-hot [N, num_labels]
    # for multi-label); None without a label column (predict).
    labels: np.ndarray | None
    texts: list[tuple[str, str | None]]  # (text, text_pair) per example, for prediction output
    max_seq_length: int  # no example is longer: the longest batch shape
    pad_id: int  # the tokenizer's padding id, for batches

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass
class ClassificationData:
    train: Split | None
    validation: Split | None
    test: Split | None
    labels: tuple[str, ...]  # label names in id order; regression: (label_column,)
    regression: bool
    multi_label: bool = False


# ---------------------------------------------------------------------------- rows and labels


@dataclasses.dataclass
class _Rows:
    """Checked texts and raw labels of one split (label names, floats for regression, or tuples
    of names for multi-label)."""

    table: Table
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


def _text_column(table: Table, column: str, what: str) -> list[str]:
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


def _read_labels(table: Table, cfg: FinetuneDataConfig, required: bool) -> list | None:
    column = cfg.label_column
    if column not in table.columns and not required:
        return None
    values = table.column(column, "label_column")
    names = table.class_names.get(column)
    if cfg.multi_label:
        return [_label_set(table, i, column, value, names, cfg.label_separator)
                for i, value in enumerate(values)]
    for i, value in enumerate(values):
        if isinstance(value, (list, tuple)):
            raise DataError(f"{table.at(i)}: column {column!r} holds a list {value!r:.60}; set "
                            "data.multi_label: true for several labels per row")
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


def _label_set(table: Table, i: int, column: str, value: Any, class_names: list[str] | None,
               separator: str) -> tuple[str, ...]:
    """The label names of row ``i`` of a multi-label column, in their order, repeats dropped.

    A CSV/TSV cell joins names with ``separator`` (spaces around each name are dropped; an empty
    cell is the empty set); JSON holds a list (or one such string); an HF dataset a list of
    ClassLabel ids. A missing value (JSON null, no key) is refused: "no labels" is ``[]``.
    """
    if value is None:
        raise DataError(f"{table.at(i)}: column {column!r} is missing (null); write [] or an "
                        "empty cell for a row with no labels")
    if isinstance(value, str):
        items = value.split(separator)
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    names = []
    for item in items:
        name = item
        if class_names is not None and isinstance(item, int) and not isinstance(item, bool):
            name = class_names[item] if 0 <= item < len(class_names) else None
        key = None if isinstance(name, (list, tuple, dict)) else _label_key(name)
        if key is None:
            if isinstance(item, str):
                continue  # "" between separators, or a blank cell
            raise DataError(f"{table.at(i)}: column {column!r} holds {item!r}, not a label name")
        names.append(key)
    return tuple(dict.fromkeys(names))


def _rows(table: Table, cfg: FinetuneDataConfig, labels_required: bool) -> _Rows:
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
    found = {name for row in train.labels for name in row} if cfg.multi_label else set(train.labels)
    names = _sort_label_names(found)
    if len(names) < 2 and cfg.multi_label:
        raise DataError(
            f"{train.table.source}: column {cfg.label_column!r} holds {len(names)} distinct "
            f"label(s) {list(names)}; multi-label classification needs at least 2"
        )
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
    if cfg.multi_label:
        multi_hot = np.zeros((len(rows.labels), len(names)), np.float32)
        for i, row in enumerate(rows.labels):
            for key in row:
                if key not in index:
                    raise DataError(
                        f"{rows.table.at(rows.indices[i])}: label {key!r} in column "
                        f"{cfg.label_column!r} is not one of the model's labels {list(names)}"
                    )
                multi_hot[i, index[key]] = 1.0
        return multi_hot
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
        max_seq_length=max_seq_length,
        pad_id=tokenizer.pad_token_id or 0,
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
        train_table = read_table(cfg.train_file)
    elif cfg.dataset is not None:
        hub = HubDataset(
            cfg.dataset, cfg.dataset_config, local_hint="data.train_file (CSV/TSV/JSON/JSONL)"
        )
        train_table = hub_table(hub, cfg.train_split, "train_split")
    else:
        raise DataError("no training data: set data.train_file or data.dataset")
    train_rows = _rows(train_table, cfg, labels_required=True)

    def explicit(file, split, what, optional_default):
        if file is not None:
            return _rows(read_table(file), cfg, labels_required=True)
        if hub is not None and split is not None:
            if hub.has(split) or split != optional_default:
                return _rows(hub_table(hub, split, what), cfg, labels_required=True)
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
        multi_label=cfg.multi_label,
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
    table = read_table(path)
    rows = _rows(table, cfg, labels_required=False)
    label_ids = None
    if rows.labels is not None and (cfg.regression or labels is not None):
        label_ids = _label_ids(rows, tuple(str(x) for x in labels or ()), cfg)
    return _split("predict", table.source, rows, label_ids, tokenizer, cfg.max_seq_length)

