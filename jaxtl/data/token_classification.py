"""Token classification data: sentences of words with tags -> word pieces with aligned labels.

    data = load_token_classification_data(cfg.data, tokenizer, max_positions=512)
    train = TokenClassificationBatcher(data.train, batch_size=32, seed=0, bucket_sizes=[32, 64, 128])

Sources: CoNLL-style files (one token per line, its tag in column ``data.tag_column``, a blank
line between sentences, ``-DOCSTART-`` lines skipped), ``.json``/``.jsonl`` records with a list of
words (``data.tokens_key``) and of tags (``data.tags_key``), or an HF dataset (``conll2003``,
``wnut_17``: ``tokens`` and ``ner_tags`` with ClassLabel names) for users online.

Words are split into pieces by the fast tokenizer (``is_split_into_words=True``; ``word_ids()``
says which word a piece belongs to). The first piece of a word carries its tag id; later pieces
get -100 (ignored by the loss), or with ``label_all_pieces`` the word's tag (``B-X`` becoming
``I-X``, as HF's ``run_ner``). A sentence with more pieces than ``max_seq_length`` allows is
split at word boundaries into windows, each one example; :func:`word_predictions` puts the
windows' predictions back together, one tag per word. Every problem is a :class:`DataError` naming
the file and line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxtl.config import TokenClassificationDataConfig
from jaxtl.data.batching import ClassificationBatcher
from jaxtl.data.sources import HubDataset, local_path, read_text
from jaxtl.errors import DataError

IGNORE_LABEL = -100  # as HF: positions the loss skips
JSON_SUFFIXES = (".json", ".jsonl")
_TOKENIZE_CHUNK = 1024  # sentences per tokenizer call


@dataclasses.dataclass
class Sentences:
    """The words (and tags) of one source, before tokenizing."""

    source: str  # file path or "dataset[split]"
    words: list[list[str]]
    tags: list[list[str]] | None  # None: the source has no tags (prediction input)
    where: list[str]  # per sentence, "file, line 7" for messages
    # CoNLL files: the line of each sentence's first word (word k is on line + k).
    first_line: list[int] | None = None
    declared_tags: tuple[str, ...] | None = None  # an HF dataset's ClassLabel names, in id order

    def word_at(self, sentence: int, k: int) -> str:
        """Where word ``k`` of ``sentence`` is, for messages."""
        if self.first_line is not None:
            return f"{self.source}, line {self.first_line[sentence] + k}"
        return f"{self.where[sentence]} (word {k + 1})"

    def __len__(self) -> int:
        return len(self.words)


@dataclasses.dataclass
class TokenSplit:
    """Tokenized windows of a :class:`Sentences`; window i is ``input_ids[i]`` (with [CLS]/[SEP]).

    Window i covers words ``first_word[i] : first_word[i] + len(word_starts[i])`` of sentence
    ``sentence[i]``; ``word_starts[i][k]`` is the position of that word's first piece (-1 for a
    word the tokenizer turns into no piece at all, e.g. a lone control character).
    """

    name: str
    source: str
    input_ids: list[np.ndarray]  # int32 [len_i]
    token_type_ids: list[np.ndarray]  # int32 [len_i]
    tag_ids: list[np.ndarray] | None  # int32 [len_i], -100 where unlabelled; None: no tags
    sentence: np.ndarray  # int64 [windows]
    first_word: np.ndarray  # int64 [windows]
    word_starts: list[np.ndarray]  # int64 [words in window]
    sentences: Sentences
    max_seq_length: int
    pad_id: int
    # The batcher's sequence-level labels: none (per-token labels are `tag_ids`).
    labels: None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass
class TokenClassificationData:
    train: TokenSplit | None
    validation: TokenSplit | None
    test: TokenSplit | None
    labels: tuple[str, ...]  # tag names in id order


# ---------------------------------------------------------------------------- reading sentences


def read_conll(path: Path, token_column: int, tag_column: int, *, tags: bool | None) -> Sentences:
    """Sentences of a CoNLL-style file. ``tags``: True requires the tag column on every token
    line, False ignores it, None reads it when the first token line has one."""
    text = read_text(path)
    words, tag_lists, where, first_line = [], [], [], []
    current_words, current_tags, start = [], [], 0
    needed = max(token_column, tag_column) + 1 if tag_column >= 0 else max(token_column + 1, 2)

    def flush():
        if current_words:
            words.append(list(current_words))
            tag_lists.append(list(current_tags))
            where.append(f"{path}, line {start}")
            first_line.append(start)
            current_words.clear()
            current_tags.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            flush()
            continue
        if tags is None:
            tags = len(fields) >= needed
        width = needed if tags else token_column + 1
        if len(fields) < width:
            what = f"data.tag_column={tag_column}" if tags else f"data.token_column={token_column}"
            raise DataError(f"{path}, line {number}: {len(fields)} column(s) {line.strip()!r}; "
                            f"{what} needs at least {width} (no tag column?)")
        if not current_words:
            start = number
        current_words.append(fields[token_column])
        if tags:
            current_tags.append(fields[tag_column])
    flush()
    if not words:
        raise DataError(f"{path}: no sentences (an empty file, or only blank/-DOCSTART- lines)")
    return Sentences(str(path), words, tag_lists if tags else None, where, first_line)


def _json_records(path: Path) -> tuple[list, str]:
    text = read_text(path)
    if path.suffix.lower() == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}: not JSON ({e.msg})") from None
        return records, "line"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not JSON ({e.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records with tokens and tags")
    return list(enumerate(data, start=1)), "record"


def _tag_name(value, names: list[str] | None, where: str, key: str) -> str:
    if isinstance(value, bool):
        raise DataError(f"{where}: tag {value!r} in {key!r} is not a tag name or id")
    if isinstance(value, int):
        if names is not None:
            if not 0 <= value < len(names):
                raise DataError(f"{where}: tag id {value} in {key!r} is outside the "
                                f"{len(names)} tag names")
            return names[value]
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise DataError(f"{where}: tag {value!r} in {key!r} is not a tag name or id")


def _sentences_from_records(source: str, records, unit: str, cfg, *, tags: bool | None,
                            tag_names: list[str] | None = None) -> Sentences:
    words, tag_lists, where = [], [], []
    for number, record in records:
        at = f"{source}, {unit} {number}"
        if not isinstance(record, dict):
            raise DataError(f"{at}: expected a record with {cfg.tokens_key!r} and {cfg.tags_key!r}")
        if cfg.tokens_key not in record:
            raise DataError(f"{at}: no {cfg.tokens_key!r} (data.tokens_key); keys: "
                            + ", ".join(map(repr, record)))
        tokens = record[cfg.tokens_key]
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise DataError(f"{at}: {cfg.tokens_key!r} must be a list of non-empty words")
        if not tokens:
            continue  # HF datasets hold some empty sentences (e.g. conll2003 document breaks)
        if tags is None:
            tags = cfg.tags_key in record
        if tags:
            if cfg.tags_key not in record:
                raise DataError(f"{at}: no {cfg.tags_key!r} (data.tags_key); keys: "
                                + ", ".join(map(repr, record)))
            row_tags = record[cfg.tags_key]
            if not isinstance(row_tags, list) or len(row_tags) != len(tokens):
                raise DataError(f"{at}: {cfg.tags_key!r} must be a list of {len(tokens)} tags, "
                                f"one per word")
            tag_lists.append([_tag_name(t, tag_names, at, cfg.tags_key) for t in row_tags])
        words.append([t.strip() for t in tokens])
        where.append(at)
    if not words:
        raise DataError(f"{source}: no sentences")
    return Sentences(source, words, tag_lists if tags else None, where)


def read_sentences(name: str, cfg: TokenClassificationDataConfig, *, tags: bool | None) -> Sentences:
    """Sentences of a local file (CoNLL, ``.json`` or ``.jsonl``, or ``asset:NAME``)."""
    path = local_path(name)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix.lower() in JSON_SUFFIXES:
        records, unit = _json_records(path)
        tag_names = [str(t) for t in cfg.labels] if cfg.labels is not None else None
        return _sentences_from_records(str(path), records, unit, cfg, tags=tags, tag_names=tag_names)
    return read_conll(path, cfg.token_column, cfg.tag_column, tags=tags)


def hub_sentences(hub: HubDataset, split: str, what: str, cfg) -> Sentences:
    """Sentences of one split of an HF dataset; ``Sequence(ClassLabel)`` tags keep their names."""
    ds = hub.split(split, what)
    feature = ds.features.get(cfg.tags_key)
    names = getattr(getattr(feature, "feature", None), "names", None)
    records = [(i, {cfg.tokens_key: row[cfg.tokens_key], cfg.tags_key: row.get(cfg.tags_key)})
               for i, row in enumerate(ds, start=1)]
    if cfg.tags_key not in ds.column_names:
        records = [(i, {cfg.tokens_key: r[cfg.tokens_key]}) for i, r in records]
    if names is None and cfg.labels is not None:  # plain int tags: data.labels names them
        names = [str(t) for t in cfg.labels]
    sentences = _sentences_from_records(f"{hub.name}[{split}]", records, "row", cfg, tags=None,
                                        tag_names=list(names) if names is not None else None)
    if getattr(getattr(feature, "feature", None), "names", None) is not None:
        sentences.declared_tags = tuple(names)
    return sentences


# ---------------------------------------------------------------------------- tags


def sort_tags(names) -> tuple[str, ...]:
    """Tag names in a stable order: "O" first, then by entity type and prefix (B before I)."""
    def key(tag: str):
        if tag == "O":
            return (0, "", "")
        prefix, _, kind = tag.partition("-")
        return (1, kind, prefix) if kind and len(prefix) == 1 else (1, tag, "")

    return tuple(sorted(set(names), key=key))


def check_tags(sentences: Sentences, labels: tuple[str, ...], known_from: str) -> None:
    """Every tag of ``sentences`` among ``labels``; the first unknown one is named with its place."""
    known = set(labels)
    for s, tags in enumerate(sentences.tags or []):
        for k, tag in enumerate(tags):
            if tag not in known:
                raise DataError(f"{sentences.word_at(s, k)}: tag {tag!r} is not among the "
                                f"{len(labels)} tags of {known_from}: {', '.join(labels)}")


def _inside_tag(tag: str, labels: tuple[str, ...]) -> str:
    """The tag of a later piece of a word tagged ``tag`` (``B-X`` -> ``I-X`` where it exists)."""
    if tag.startswith("B-") and "I-" + tag[2:] in labels:
        return "I-" + tag[2:]
    return tag


# ---------------------------------------------------------------------------- tokenizing


def _word_pieces(tokenizer, words: list[list[str]]) -> Iterator[tuple[list[int], list]]:
    """Per sentence: (input_ids with specials, word id per position or None)."""
    for start in range(0, len(words), _TOKENIZE_CHUNK):
        encoded = tokenizer(words[start : start + _TOKENIZE_CHUNK], is_split_into_words=True,
                            truncation=False)
        for i, ids in enumerate(encoded["input_ids"]):
            yield ids, encoded.word_ids(i)


def _windows(pieces_per_word: list[int], capacity: int, sentences: Sentences, s: int) -> list[tuple[int, int]]:
    """[start, stop) word ranges whose pieces fit ``capacity``, cut only at word boundaries."""
    windows, start, used = [], 0, 0
    for k, n in enumerate(pieces_per_word):
        if n > capacity:
            raise DataError(f"{sentences.word_at(s, k)}: one word is {n} word pieces, more than the "
                            f"{capacity} a window of data.max_seq_length holds; raise it")
        if used + n > capacity:
            windows.append((start, k))
            start, used = k, 0
        used += n
    windows.append((start, len(pieces_per_word)))
    return windows


def tokenize(name: str, sentences: Sentences, tokenizer, labels: tuple[str, ...] | None,
             max_seq_length: int, label_all_pieces: bool = False) -> TokenSplit:
    """Windows of word pieces with aligned tag ids (``labels``: tag names in id order; None or
    tagless sentences give ``tag_ids=None``)."""
    capacity = max_seq_length - tokenizer.num_special_tokens_to_add()
    label_id = {tag: i for i, tag in enumerate(labels or ())}
    with_tags = sentences.tags is not None and labels is not None
    plan = []  # (sentence, first word, stop word)
    for s, (ids, word_ids) in enumerate(_word_pieces(tokenizer, sentences.words)):
        pieces = np.bincount([w for w in word_ids if w is not None],
                             minlength=len(sentences.words[s])).tolist()
        if len(ids) <= max_seq_length:
            plan.append((s, 0, len(sentences.words[s])))
            continue
        plan.extend((s, a, b) for a, b in _windows(pieces, capacity, sentences, s))
    window_words = [sentences.words[s][a:b] for s, a, b in plan]
    input_ids, token_type_ids, tag_ids, word_starts = [], [], [] if with_tags else None, []
    for (s, first, stop), (ids, word_ids) in zip(plan, _word_pieces(tokenizer, window_words)):
        ids = np.asarray(ids, np.int32)
        starts = np.full(stop - first, -1, np.int64)
        tags_L = np.full(len(ids), IGNORE_LABEL, np.int32)
        previous = None
        for position, word in enumerate(word_ids):
            if word is None:
                previous = None
                continue
            if word != previous:
                starts[word] = position
            if with_tags:
                tag = sentences.tags[s][first + word]
                if word != previous:
                    tags_L[position] = label_id[tag]
                elif label_all_pieces:
                    tags_L[position] = label_id[_inside_tag(tag, labels)]
            previous = word
        input_ids.append(ids)
        token_type_ids.append(np.zeros(len(ids), np.int32))
        word_starts.append(starts)
        if with_tags:
            tag_ids.append(tags_L)
    return TokenSplit(
        name, sentences.source, input_ids, token_type_ids, tag_ids,
        np.asarray([s for s, _, _ in plan], np.int64), np.asarray([a for _, a, _ in plan], np.int64),
        word_starts, sentences, max_seq_length=max_seq_length, pad_id=tokenizer.pad_token_id or 0,
    )


def word_predictions(split: TokenSplit, predicted_ids: np.ndarray, fallback: int = 0) -> list[list[int]]:
    """Per sentence, one predicted tag id per word, from ``predicted_ids [windows, >= L]`` (tag
    ids per position; the first piece of a word decides, as ``aggregation_strategy="first"``).
    A word without pieces gets ``fallback``."""
    out = [np.full(len(words), fallback, np.int64) for words in split.sentences.words]
    for i in range(len(split)):
        starts = split.word_starts[i]
        first = split.first_word[i]
        found = starts >= 0
        words = out[split.sentence[i]]
        words[first : first + len(starts)][found] = predicted_ids[i][starts[found]]
    return [w.tolist() for w in out]


# ---------------------------------------------------------------------------- loading


def _check_length(cfg: TokenClassificationDataConfig, max_positions: int) -> None:
    if cfg.max_seq_length > max_positions:
        raise DataError(f"data.max_seq_length={cfg.max_seq_length} is longer than the model's "
                        f"max_position_embeddings={max_positions}")


def load_token_classification_data(
    cfg: TokenClassificationDataConfig, tokenizer, *, max_positions: int,
    labels: tuple[str, ...] | None = None,
) -> TokenClassificationData:
    """Train/validation/test windows. ``labels`` (a trained head's tags) or ``data.labels`` fix
    the tag ids; otherwise they are the training tags, sorted. A validation/test tag outside them
    is an error naming where it is."""
    _check_length(cfg, max_positions)
    if cfg.dataset is not None:
        hub = HubDataset(cfg.dataset, cfg.dataset_config,
                         local_hint="data.train_file (CoNLL or JSONL with tokens and tags)")
        train = hub_sentences(hub, cfg.train_split, "train_split", cfg)
        validation = (hub_sentences(hub, cfg.validation_split, "validation_split", cfg)
                      if hub.has(cfg.validation_split) else None)
        test = hub_sentences(hub, cfg.test_split, "test_split", cfg) if cfg.test_split else None
    else:
        train = read_sentences(cfg.train_file, cfg, tags=True)
        validation = read_sentences(cfg.validation_file, cfg, tags=True) if cfg.validation_file else None
        test = read_sentences(cfg.test_file, cfg, tags=True) if cfg.test_file else None
    if train.tags is None:
        raise DataError(f"{train.source}: no tags ({cfg.tags_key!r}) to train on")
    if labels is not None:
        known_from = "the trained head"
    elif cfg.labels is not None:
        labels, known_from = tuple(str(t) for t in cfg.labels), "data.labels"
    elif train.declared_tags is not None:  # ClassLabel names keep the dataset's ids, as run_ner
        labels, known_from = train.declared_tags, f"{train.source} (ClassLabel names)"
    else:
        labels = sort_tags(t for tags in train.tags for t in tags)
        known_from = f"the training data ({train.source})"
    if len(labels) < 2:
        raise DataError(f"{train.source}: only one tag ({labels[0]!r}); nothing to learn")
    for sentences in (train, validation, test):
        if sentences is not None:
            if sentences.tags is None:
                raise DataError(f"{sentences.source}: no tags ({cfg.tags_key!r}) to evaluate against")
            check_tags(sentences, labels, known_from)

    def split(name, sentences):
        if sentences is None:
            return None
        return tokenize(name, sentences, tokenizer, labels, cfg.max_seq_length, cfg.label_all_pieces)

    return TokenClassificationData(split("train", train), split("validation", validation),
                                   split("test", test), labels)


def load_prediction_split(path: str, cfg: TokenClassificationDataConfig, tokenizer, *,
                          max_positions: int, labels: tuple[str, ...], require_tags: bool) -> TokenSplit:
    """Windows of a file to predict on (tags read when present) or to evaluate (tags required).
    Windows are at most the model's ``max_positions`` long even if ``data.max_seq_length`` is
    longer (nothing is cut either way: long sentences only get more windows)."""
    sentences = read_sentences(path, cfg, tags=True if require_tags else None)
    if sentences.tags is not None:
        check_tags(sentences, labels, "the model")
    length = min(cfg.max_seq_length, max_positions)
    return tokenize("predict", sentences, tokenizer, labels, length, cfg.label_all_pieces)


# ---------------------------------------------------------------------------- batches


class TokenClassificationBatcher(ClassificationBatcher):
    """:class:`ClassificationBatcher` batches of a :class:`TokenSplit` (same buckets, epochs
    and exact padded last eval batch), whose ``labels`` are per position: int32 [b, L], -100 on
    unlabelled positions, pads and padding rows."""

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        if self.split.tag_ids is None:
            raise DataError(f"{self.split.source}: training needs tags")
        epoch, index = divmod(step, self.steps_per_epoch)
        return self._assemble(self._epoch_plan(epoch)[index])

    def _assemble(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        batch = super()._assemble(rows_B)
        if self.split.tag_ids is None:
            return batch
        labels = np.full(batch["input_ids"].shape, IGNORE_LABEL, np.int32)
        for i, row in enumerate(rows_B[self.local]):
            if row >= 0:
                tags = self.split.tag_ids[row]
                labels[i, : len(tags)] = tags
        batch["labels"] = labels
        return batch
