"""Multiple-choice data (SWAG-style): a context, C choices, the index of the right one -> C
tokenized (context, question + choice) pairs per example.

    data = load_multiple_choice_data(cfg.data, tokenizer, max_positions=512)
    train = MultipleChoiceBatcher(data.train, batch_size=16, seed=0, bucket_sizes=[32, 64, 128])

Sources are tables (:mod:`jaxtl.data.tables`: local CSV/TSV/JSON/JSONL files, or an HF dataset
such as ``swag``). A row holds ``data.context_column``, the choices — one column per choice
(``data.choice_columns``) or one column of lists (``data.choices_column``; in CSV/TSV a JSON
list) — an optional ``data.question_column`` put before every choice (SWAG's ``sent2``: the
start of the sentence each ending completes; joined with a space, as HF's ``run_swag``), and
``data.label_column``, the 0-based index of the right choice (optional for prediction; HF's -1
on every row means hidden labels).

Each choice is the pair ``[CLS] context [SEP] question choice [SEP]``, at most
``data.max_seq_length`` tokens. A longer pair loses tokens from the end of the *context* first
(``only_first``), so every choice is read whole — the choices are what the model must tell
apart, and they share the context; only when question + choice alone leave no room for a context
token is the pair cut from both ends (``longest_first``). Every problem is a :class:`DataError`
naming the file, line and column.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from jaxtl.config import MultipleChoiceDataConfig
from jaxtl.data.batching import Batcher, ClassificationBatcher
from jaxtl.data.sources import HubDataset
from jaxtl.data.tables import Table, hub_table, read_table
from jaxtl.errors import DataError

_TOKENIZE_CHUNK = 1024  # pairs per tokenizer call: fast, with bounded memory
HIDDEN_LABEL = -1  # HF datasets' label of an unlabelled example (SWAG's test split)


@dataclasses.dataclass
class ChoiceSplit:
    """One tokenized split. Example i's choices are the rows of ``input_ids[i]`` (int32
    ``[C, L_i]``, padded with ``pad_id`` past each choice's ``choice_lengths[i]``)."""

    name: str  # "train" / "validation" / "test" / "predict"
    source: str  # file path or dataset split, for messages
    input_ids: list[np.ndarray]  # int32 [C, L_i] per example
    token_type_ids: list[np.ndarray]  # int32 [C, L_i]
    choice_lengths: list[np.ndarray]  # int64 [C]: tokens of each choice
    labels: np.ndarray | None  # int32 [N] right-choice indices; None: no labels (predict)
    num_choices: int  # C, the same for every example of the split
    max_seq_length: int  # no choice is longer
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass
class MultipleChoiceData:
    train: ChoiceSplit | None
    validation: ChoiceSplit | None
    test: ChoiceSplit | None


# ---------------------------------------------------------------------------- rows


def _text(table: Table, i: int, column: str, value, *, what: str, allow_empty: bool = False) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise DataError(f"{table.at(i)}: {what} in column {column!r} is empty ({value!r})")
    return value.strip()


def _choices(table: Table, cfg: MultipleChoiceDataConfig) -> list[list[str]]:
    """The choices of every row, checked: all there, non-empty, as many in every row."""
    if cfg.choice_columns is not None:
        columns = [table.column(name, "choice_columns") for name in cfg.choice_columns]
        return [
            [_text(table, i, name, values[i], what=f"choice {k}")
             for k, (name, values) in enumerate(zip(cfg.choice_columns, columns))]
            for i in range(len(table))
        ]
    name = cfg.choices_column
    rows = []
    for i, value in enumerate(table.column(name, "choices_column")):
        if isinstance(value, str) and value.strip().startswith("["):
            try:  # a JSON list in a CSV/TSV cell
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise DataError(f"{table.at(i)}: column {name!r} is not a JSON list ({e.msg})") from None
        if not isinstance(value, list):
            raise DataError(f"{table.at(i)}: column {name!r} holds {value!r:.80}, not a list of choices")
        choices = [_text(table, i, name, v, what=f"choice {k}") for k, v in enumerate(value)]
        if rows and len(choices) != len(rows[0]):
            raise DataError(f"{table.at(i)}: column {name!r} holds {len(choices)} choices but "
                            f"{table.at(0)} holds {len(rows[0])}; every row needs as many")
        rows.append(choices)
    if rows and len(rows[0]) < 2:
        raise DataError(f"{table.at(0)}: column {name!r} holds {len(rows[0])} choice(s); multiple "
                        "choice needs at least 2")
    return rows


def _labels(table: Table, cfg: MultipleChoiceDataConfig, num_choices: int,
            required: bool) -> np.ndarray | None:
    """Right-choice indices ``[N]``; None without a label column (prediction) or all hidden."""
    column = cfg.label_column
    if column not in table.columns and not required:
        return None
    values = table.column(column, "label_column")
    indices = []
    for i, value in enumerate(values):
        index = None
        if isinstance(value, int) and not isinstance(value, bool):
            index = value
        elif isinstance(value, float) and value.is_integer():
            index = int(value)
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            index = int(value.strip())
        if index is None:
            raise DataError(f"{table.at(i)}: column {column!r} holds {value!r}, not the index of a "
                            f"choice (0..{num_choices - 1})")
        indices.append(index)
    if all(index == HIDDEN_LABEL for index in indices):
        if required:
            raise DataError(f"{table.source}: the labels in column {column!r} are hidden (all -1)")
        return None
    for i, index in enumerate(indices):
        if not 0 <= index < num_choices:
            raise DataError(f"{table.at(i)}: label {index} in column {column!r} is not a choice "
                            f"index: the row has {num_choices} choices (0..{num_choices - 1})")
    return np.asarray(indices, np.int32)


# ---------------------------------------------------------------------------- tokenizing


def _check_lengths(cfg: MultipleChoiceDataConfig, max_positions: int) -> None:
    if cfg.max_seq_length > max_positions:
        raise DataError(f"data.max_seq_length={cfg.max_seq_length} is longer than the model's "
                        f"max_position_embeddings={max_positions}")


def encode_pairs(tokenizer, firsts: Sequence[str], seconds: Sequence[str], max_length: int):
    """``(input_ids, token_type_ids)`` lists of the pairs, at most ``max_length`` tokens each:
    the first text is cut first (``only_first``), both (``longest_first``) only where the
    second alone leaves no room for a token of the first."""
    special = tokenizer.num_special_tokens_to_add(pair=True)
    alone = tokenizer(list(seconds), add_special_tokens=False)["input_ids"]
    second_lengths = [len(ids) for ids in alone]
    input_ids: list = [None] * len(firsts)
    token_type_ids: list = [None] * len(firsts)
    for strategy, fits in (("only_first", True), ("longest_first", False)):
        rows = [i for i, n in enumerate(second_lengths) if (n + special < max_length) == fits]
        if not rows:
            continue
        encoded = tokenizer([firsts[i] for i in rows], [seconds[i] for i in rows],
                            truncation=strategy, max_length=max_length)
        types = encoded.get("token_type_ids") or [[0] * len(x) for x in encoded["input_ids"]]  # RoBERTa
        for i, ids, segment in zip(rows, encoded["input_ids"], types):
            input_ids[i], token_type_ids[i] = ids, segment
    return input_ids, token_type_ids


def _split(name: str, table: Table, cfg: MultipleChoiceDataConfig, tokenizer, *,
           labels_required: bool) -> ChoiceSplit:
    contexts = [_text(table, i, cfg.context_column, v, what="the context")
                for i, v in enumerate(table.column(cfg.context_column, "context_column"))]
    questions = [""] * len(table)
    if cfg.question_column is not None:
        questions = [_text(table, i, cfg.question_column, v, what="the question", allow_empty=True)
                     for i, v in enumerate(table.column(cfg.question_column, "question_column"))]
    choices = _choices(table, cfg)
    num_choices = len(choices[0])
    labels = _labels(table, cfg, num_choices, labels_required)
    firsts = [context for context in contexts for _ in range(num_choices)]
    seconds = [f"{question} {choice}" if question else choice
               for question, row in zip(questions, choices) for choice in row]
    flat_ids, flat_types = [], []
    for start in range(0, len(firsts), _TOKENIZE_CHUNK):
        stop = start + _TOKENIZE_CHUNK
        ids, types = encode_pairs(tokenizer, firsts[start:stop], seconds[start:stop], cfg.max_seq_length)
        flat_ids.extend(ids)
        flat_types.extend(types)
    pad_id = tokenizer.pad_token_id or 0
    input_ids, token_type_ids, choice_lengths = [], [], []
    for example in range(len(contexts)):
        pairs = range(example * num_choices, (example + 1) * num_choices)
        lengths = np.asarray([len(flat_ids[p]) for p in pairs], np.int64)
        ids_CxL = np.full((num_choices, lengths.max()), pad_id, np.int32)
        types_CxL = np.zeros((num_choices, lengths.max()), np.int32)
        for k, p in enumerate(pairs):
            ids_CxL[k, : lengths[k]] = flat_ids[p]
            types_CxL[k, : lengths[k]] = flat_types[p]
        input_ids.append(ids_CxL)
        token_type_ids.append(types_CxL)
        choice_lengths.append(lengths)
    return ChoiceSplit(name, table.source, input_ids, token_type_ids, choice_lengths, labels,
                       num_choices, cfg.max_seq_length, pad_id)


def load_multiple_choice_data(cfg: MultipleChoiceDataConfig, tokenizer, *,
                              max_positions: int) -> MultipleChoiceData:
    """Read, check and tokenize the train/validation/test data that ``cfg`` names: local files,
    or the splits of ``cfg.dataset`` (validation only when the dataset has that split, unless
    named explicitly)."""
    _check_lengths(cfg, max_positions)
    hub = None
    if cfg.train_file is not None:
        train_table = read_table(cfg.train_file)
    elif cfg.dataset is not None:
        hub = HubDataset(cfg.dataset, cfg.dataset_config,
                         local_hint="data.train_file (CSV/TSV/JSON/JSONL)")
        train_table = hub_table(hub, cfg.train_split, "train_split")
    else:
        raise DataError("no training data: set data.train_file or data.dataset")

    def other(file, split, what, optional_default):
        if file is not None:
            return read_table(file)
        if hub is not None and split is not None and (hub.has(split) or split != optional_default):
            return hub_table(hub, split, what)
        return None

    tables = {
        "train": train_table,
        "validation": other(cfg.validation_file, cfg.validation_split, "validation_split", "validation"),
        "test": other(cfg.test_file, cfg.test_split, "test_split", None),
    }
    splits = {name: None if table is None else _split(name, table, cfg, tokenizer, labels_required=True)
              for name, table in tables.items()}
    return MultipleChoiceData(**splits)


def load_prediction_split(path: str, cfg: MultipleChoiceDataConfig, tokenizer, *,
                          max_positions: int) -> ChoiceSplit:
    """Tokenize a file to predict on; its label column is optional (checked when present)."""
    _check_lengths(cfg, max_positions)
    return _split("predict", read_table(path), cfg, tokenizer, labels_required=False)


# ---------------------------------------------------------------------------- batches


class MultipleChoiceBatcher(ClassificationBatcher):
    """Classification's batch plan (shuffled epochs, sortish buckets by an example's longest
    choice, evaluation shortest first) over a :class:`ChoiceSplit`, with batches of int32
    ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[b, C, L]``; ``labels`` [b] int32
    (when the split has labels); ``example_weight`` [b] float32; evaluation batches also
    ``index``. A padding row attends to the first position of each choice, weight 0."""

    def __init__(self, split: ChoiceSplit, *, batch_size: int, seed: int = 0, bucket_sizes=(),
                 process_index: int = 0, process_count: int = 1):
        # Not ClassificationBatcher.__init__: an example's length is its longest choice.
        Batcher.__init__(self, batch_size=batch_size, seed=seed, process_index=process_index,
                         process_count=process_count)
        self.split = split
        longest = split.max_seq_length
        self.buckets = sorted({int(b) for b in bucket_sizes if b <= longest} | {longest})
        self.lengths = np.fromiter((x.shape[1] for x in split.input_ids), np.int64, len(split))
        self._plan = None
        self.packing = False  # ClassificationBatcher's packing is per example, not per choice set

    def _assemble(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        split, lengths = self.split, self.lengths
        real = rows_B[rows_B >= 0]
        longest = int(lengths[real].max()) if len(real) else 1
        seq_len = next(b for b in self.buckets if b >= longest)
        rows_b = rows_B[self.local]
        b, C = len(rows_b), split.num_choices
        input_ids = np.full((b, C, seq_len), split.pad_id, np.int32)
        attention_mask = np.zeros((b, C, seq_len), np.int32)
        token_type_ids = np.zeros((b, C, seq_len), np.int32)
        labels = np.zeros(b, np.int32)
        for i, row in enumerate(rows_b):
            if row < 0:
                attention_mask[i, :, 0] = 1  # no all-masked softmax row; weight 0 drops it
                continue
            n = lengths[row]
            input_ids[i, :, :n] = split.input_ids[row]
            token_type_ids[i, :, :n] = split.token_type_ids[row]
            attention_mask[i] = np.arange(seq_len)[None, :] < split.choice_lengths[row][:, None]
            if split.labels is not None:
                labels[i] = split.labels[row]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids,
                 "example_weight": (rows_b >= 0).astype(np.float32)}
        if split.labels is not None:
            batch["labels"] = labels
        return batch
