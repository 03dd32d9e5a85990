"""BERT pretraining data: masked-LM + next-sentence-prediction batches from plain text.

The recipe is the original one (google-research/bert ``create_pretraining_data.py``), re-done so
that every batch is a pure function of ``(seed, step)``:

* **Text → documents → sentences.** Text files hold documents separated by blank lines; every
  other line is split into sentences by a small regex (a sentence never spans a line break, and a
  line holding several sentences — a paragraph — is cut after ``.``/``!``/``?`` followed by a
  capitalised word; common abbreviations and initials do not end a sentence). Files with one
  sentence per line (BERT's own format) therefore keep their lines. An HF dataset gives one
  document per row of ``text_column``, split the same way.
* **Instances** of epoch ``e`` come from ``np.random.default_rng([seed, e])``: with NSP, each
  document is cut into chunks of consecutive sentences up to a target length (``max_seq_length -
  3``, or with ``short_seq_prob`` a random shorter one); segment A is the chunk's first sentences,
  B the true continuation (``nsp_labels`` 0) or, with probability 1/2, text from a random other
  document (label 1; the unused sentences go back to the document). The pair is truncated to fit,
  one token at a time from the longer segment's front or back. Without NSP the token stream
  (documents joined by ``[SEP]``) is packed into full ``[CLS] ... [SEP]`` rows. An instance is
  four offsets into one token array, so an epoch of a large corpus costs little memory.
* **Masking** happens per batch, from a generator seeded with ``[seed, step, 1]`` and advanced to
  each row, so a row's masks do not depend on how the global batch is split over processes.

    train, val = load_pretraining_data(cfg.data, tokenizer, model_vocab_size=model_cfg.vocab_size)
    batch = train.train_batch(step, batch_size=256, seed=0, process_index=0, process_count=1)
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import itertools
import math
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxtl.config import PretrainDataConfig
from jaxtl.errors import DataError

# Third words of the seed sequences (numpy's SeedSequence pads with zeros, so [s, e] == [s, e, 0]:
# the streams must differ in a nonzero word, not in length).
_TRAIN_MASK_STREAM = 1
_EVAL_INSTANCE_STREAM = 2
_EVAL_MASK_STREAM = 3
_UNIFORMS_PER_TOKEN = 3  # selection score, 80/10/10 action, random replacement id
_TOKENIZE_CHUNK = 8192  # sentences per tokenizer call
_EPOCH_CACHE_SIZE = 2  # epochs of instances kept (the current one and, around a boundary, the next)


# ------------------------------------------------------------------------------ reading text

# A sentence ends at .!? (plus closing quotes/brackets) followed by whitespace and a capitalised
# word or a digit, unless the dot ends a common abbreviation or an initial ("J. Smith").
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_NOT_AN_END = re.compile(r"(?:^|[\s(\"'])(?:Mr|Mrs|Ms|Dr|St|Prof|vs|No|e\.g|i\.e|[A-Z])\.$")
_GLOB_CHARS = re.compile(r"[*?\[]")


def split_sentences(line: str) -> list[str]:
    """Sentences of one line of text (the line itself when it holds only one)."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(line):
        if _NOT_AN_END.search(line, max(0, match.start() - 6), match.start() + 1):
            continue
        sentence = line[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    rest = line[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _split_text(text: str) -> list[list[str]]:
    """Documents (separated by blank lines) of sentences."""
    documents, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.extend(split_sentences(line))
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


def _text_files(names: list) -> list[Path]:
    """The files named by ``data.train_files`` (paths, globs, ``asset:`` names), in order."""
    files: list[Path] = []
    for name in names:
        name = str(name)
        if name.startswith("asset:"):
            from jaxtl import assets  # lazily: fetching needs pip, plain files do not

            name = assets.resolve(name)
        expanded = str(Path(name).expanduser())
        if _GLOB_CHARS.search(expanded):
            matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise DataError(f"data.train_files: {name!r} matches no files")
            files.extend(matches)
            continue
        path = Path(expanded)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not inside:
                raise DataError(f"data.train_files: folder {path} holds no .txt files")
            files.extend(inside)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"data.train_files: {path} does not exist")
    return files


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}); "
            "convert it, e.g. with `iconv -f latin1 -t utf-8`"
        ) from None


def read_documents(cfg: PretrainDataConfig) -> list[list[str]]:
    """Documents, each a list of sentences, from ``cfg.train_files`` or the HF ``cfg.dataset``.

    Raises DataError for a missing file, a glob matching nothing, non-UTF-8 text, an empty corpus,
    or (with ``cfg.nsp``) a corpus of a single sentence.
    """
    if cfg.dataset is not None and cfg.train_files:
        raise DataError("set either data.train_files or data.dataset, not both")
    if cfg.dataset is not None:
        source = f"data.dataset={cfg.dataset!r}"
        documents = _dataset_documents(cfg)
    elif cfg.train_files:
        files = _text_files(list(cfg.train_files))
        source = "data.train_files " + ", ".join(str(f) for f in files)
        documents = []
        for path in files:  # a document never spans two files
            documents.extend(_split_text(_read_text(path)))
    else:
        raise DataError("set data.train_files (text files) or data.dataset")
    if not documents:
        raise DataError(f"{source}: no text (the corpus is empty)")
    if cfg.nsp and sum(len(d) for d in documents) < 2:
        raise DataError(
            f"{source}: the whole corpus is one sentence, so next-sentence prediction is "
            "impossible; add text, or set data.nsp=false for masked-LM only"
        )
    return documents


def _dataset_documents(cfg: PretrainDataConfig) -> list[list[str]]:
    import datasets  # lazily: importing `datasets` takes a second

    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.train_split)
    except Exception as e:  # noqa: BLE001 - many error types; all mean "cannot load it"
        raise DataError(
            f"could not load data.dataset={cfg.dataset!r} (config {cfg.dataset_config!r}, split "
            f"{cfg.train_split!r}): {type(e).__name__}: {e}"
        ) from e
    if cfg.text_column not in ds.column_names:
        raise DataError(
            f"data.text_column={cfg.text_column!r} is not a column of {cfg.dataset!r}; "
            f"columns: {', '.join(ds.column_names)}"
        )
    documents = []
    for text in ds[cfg.text_column]:
        if not isinstance(text, str):
            continue
        sentences = [s for line in text.splitlines() for s in split_sentences(line)]
        if sentences:
            documents.append(sentences)
    return documents


# ------------------------------------------------------------------------------ tokens


@dataclasses.dataclass(frozen=True, eq=False)
class SpecialTokens:
    """Token ids the batches need, from the tokenizer."""

    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    vocab_size: int  # the tokenizer's vocabulary, len(tokenizer); the model's may be larger
    never_mask: tuple  # ids never chosen for masking nor drawn as random replacements
    # bool [vocab_size]: True for pieces that continue a word ("##ing" in WordPiece, pieces
    # without "▁" in SentencePiece); None when the vocabulary marks no word boundaries.
    continuation: np.ndarray | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokens:
        needed = {"[CLS]": "cls", "[SEP]": "sep", "[MASK]": "mask", "[PAD]": "pad"}
        missing = [
            token
            for token, attr in needed.items()
            if getattr(tokenizer, f"{attr}_token_id", None) is None
        ]
        if missing:
            raise DataError(
                f"the tokenizer {type(tokenizer).__name__} has no {', '.join(missing)} token; "
                "BERT pretraining needs [CLS], [SEP], [MASK] and [PAD]"
            )
        vocab_size = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        pieces = ["" if p is None else p for p in pieces]
        continuation = None
        if any(p.startswith("##") for p in pieces):
            continuation = np.array([p.startswith("##") for p in pieces], dtype=bool)
        elif any(p.startswith("\u2581") for p in pieces):
            continuation = np.array([not p.startswith("\u2581") for p in pieces], dtype=bool)
        special_ids = set(tokenizer.all_special_ids)
        special_ids |= {tokenizer.cls_token_id, tokenizer.sep_token_id}
        special_ids |= {tokenizer.mask_token_id, tokenizer.pad_token_id}
        if continuation is not None:
            continuation[list(special_ids)] = False
        return cls(
            cls_id=int(tokenizer.cls_token_id),
            sep_id=int(tokenizer.sep_token_id),
            mask_id=int(tokenizer.mask_token_id),
            pad_id=int(tokenizer.pad_token_id),
            vocab_size=vocab_size,
            never_mask=tuple(sorted(int(i) for i in special_ids)),
            continuation=continuation,
        )

    @functools.cached_property
    def never_mask_lut(self) -> np.ndarray:
        """bool [vocab_size]: ids that are never masked."""
        lut = np.zeros(self.vocab_size, dtype=bool)
        lut[list(self.never_mask)] = True
        return lut

    @functools.cached_property
    def replacement_ids(self) -> np.ndarray:
        """int32: the ids a random replacement is drawn from (the vocabulary less special ids)."""
        return np.flatnonzero(~self.never_mask_lut).astype(np.int32)


def _num_predictions(cfg: PretrainDataConfig) -> int:
    """P, the masked positions per row: cfg.max_predictions, else ceil(p * L) + 1."""
    length = cfg.max_seq_length
    if cfg.max_predictions is not None:
        return max(1, min(cfg.max_predictions, length))
    # round(p * eligible) <= ceil(p * L) always, so this never cuts a row's masks short.
    return min(math.ceil(cfg.mlm_probability * length) + 1, length)


def _mask_batch(
    input_ids: np.ndarray,
    uniforms: np.ndarray,
    *,
    special: SpecialTokens,
    cfg: PretrainDataConfig,
    max_predictions: int,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masks rows of ``input_ids`` [b, L] with the uniforms [b, 3, L]; see :func:`mask_tokens`."""
    ids = input_ids
    b, length = ids.shape
    P = max_predictions
    rows = np.arange(b)[:, None]
    cols = np.arange(length)[None, :]
    eligible = ~special.never_mask_lut[ids]
    num_eligible = eligible.sum(axis=1)
    num_to_mask = np.clip(np.rint(cfg.mlm_probability * num_eligible).astype(np.int64), 1, P)
    num_to_mask = np.minimum(num_to_mask, num_eligible)

    if cfg.whole_word_mask:
        if word_starts is None:
            if special.continuation is None:
                raise DataError(
                    "data.whole_word_mask needs word boundaries, but the tokenizer's vocabulary "
                    "has neither WordPiece '##' nor SentencePiece '\u2581' pieces"
                )
            word_starts = ~special.continuation[ids]
        # A continuation piece right after a special token (its word was truncated away) starts
        # a word of its own.
        prev_eligible = np.zeros_like(eligible)
        prev_eligible[:, 1:] = eligible[:, :-1]
        starts = eligible & (word_starts.reshape(ids.shape) | ~prev_eligible)
    else:
        starts = eligible

    # Words (tokens without whole-word masking) in a random order: eligible starts first.
    order = np.argsort(np.where(starts, uniforms[:, 0], 2.0), axis=1)
    if cfg.whole_word_mask:
        # Each eligible token belongs to the last word start at or before it.
        start_of = np.maximum.accumulate(np.where(starts, cols, 0), axis=1)
        flat_start = (rows * length + start_of)[eligible]
        word_len = np.bincount(flat_start, minlength=b * length).reshape(b, length)
        len_in_order = np.take_along_axis(word_len, order, axis=1)
        # Greedy as in the original: take words in order while they fit the budget, skipping a
        # word that would overshoot it (vectorised over rows, one rank at a time).
        accepted = np.zeros((b, length), dtype=bool)
        taken = np.zeros(b, dtype=np.int64)
        for rank in range(int(starts.sum(axis=1).max(initial=0))):
            n = len_in_order[:, rank]
            fits = (n > 0) & (taken + n <= num_to_mask)
            accepted[:, rank] = fits
            taken += np.where(fits, n, 0)
            if (taken >= num_to_mask).all():
                break
        chosen_start = np.zeros((b, length), dtype=bool)
        np.put_along_axis(chosen_start, order, accepted, axis=1)
        chosen = eligible & chosen_start[rows, start_of]
    else:
        chosen = np.zeros((b, length), dtype=bool)
        np.put_along_axis(chosen, order, cols < num_to_mask[:, None], axis=1)

    # 80% [MASK], 10% a random token, 10% unchanged (with the configured shares).
    action = uniforms[:, 1]
    to_mask = chosen & (action < cfg.mask_token_prob)
    to_random = chosen & ~to_mask & (action < cfg.mask_token_prob + cfg.random_token_prob)
    candidates = special.replacement_ids
    random_ids = candidates[
        np.minimum((uniforms[:, 2] * len(candidates)).astype(np.int64), len(candidates) - 1)
    ]
    masked_ids = np.where(to_mask, special.mask_id, np.where(to_random, random_ids, ids))

    # Chosen positions, ascending (a stable sort of "not chosen" puts them first, in order).
    positions = np.argsort(~chosen, axis=1, kind="stable")[:, :P]
    if positions.shape[1] < P:
        positions = np.pad(positions, ((0, 0), (0, P - positions.shape[1])))
    valid = np.arange(P)[None, :] < chosen.sum(axis=1)[:, None]
    positions = np.where(valid, positions, 0)
    labels = np.where(valid, np.take_along_axis(ids, positions, axis=1), 0)
    return (
        masked_ids.astype(np.int32),
        positions.astype(np.int32),
        labels.astype(np.int32),
        valid.astype(np.float32),
    )


def mask_tokens(
    input_ids: np.ndarray,
    rng: np.random.Generator,
    *,
    special: SpecialTokens,
    cfg: PretrainDataConfig,
    max_predictions: int,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masks one row ``input_ids`` [L] for masked-LM training.

    ``round(cfg.mlm_probability * eligible)`` positions (at least 1, at most ``max_predictions``)
    are chosen among the tokens that are not special ids (padding included); of those,
    ``cfg.mask_token_prob`` become [MASK], ``cfg.random_token_prob`` a random non-special id, the
    rest stay. With ``cfg.whole_word_mask`` whole words are chosen: ``word_starts`` (bool [L]) marks
    the tokens that begin a word, by default derived from the vocabulary ('##' pieces continue a
    word); a word that would overshoot the count is skipped, as in the original recipe.

    Returns ``masked_input_ids`` [L], ``positions`` [P] (ascending, then 0), ``labels`` [P] (the
    original ids, 0 in unused slots) and ``weights`` [P] (1.0 real, 0.0 unused), P =
    ``max_predictions``. Draws ``rng.random((3, L))``, exactly what a batch row draws.
    """
    ids = np.asarray(input_ids)
    uniforms = rng.random((_UNIFORMS_PER_TOKEN, ids.shape[-1]))
    starts = None if word_starts is None else np.asarray(word_starts, dtype=bool)[None]
    masked, positions, labels, weights = _mask_batch(
        ids[None],
        uniforms[None],
        special=special,
        cfg=cfg,
        max_predictions=max_predictions,
        word_starts=starts,
    )
    return masked[0], positions[0], labels[0], weights[0]


def _row_uniforms(seed_words: list[int], first_row: int, num_rows: int, length: int) -> np.ndarray:
    """Uniforms [num_rows, 3, L] of rows first_row.. of one stream, without drawing earlier rows.

    A float64 from numpy's Generator.random consumes exactly one PCG64 output, so advancing the
    bit generator by the skipped count lands on the same numbers a full draw would give.
    """
    bit_generator = np.random.PCG64(np.random.SeedSequence(seed_words))
    per_row = _UNIFORMS_PER_TOKEN * length
    bit_generator.advance(first_row * per_row)
    return np.random.Generator(bit_generator).random((num_rows, _UNIFORMS_PER_TOKEN, length))


# ------------------------------------------------------------------------------ instances


@dataclasses.dataclass(frozen=True)
class _Instances:
    """Rows ``[CLS] A [SEP] B [SEP]`` as offsets into a token array (b_len 0: ``[CLS] A [SEP]``)."""

    a_start: np.ndarray  # int64 [N]
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    is_random_next: np.ndarray  # bool [N]

    def take(self, index: np.ndarray) -> _Instances:
        return _Instances(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    def __len__(self) -> int:
        return len(self.a_start)


def _truncation(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Tokens cut from A and B by the original loop (one token at a time from the longer one)."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return 0, 0
    diff = len_a - len_b
    if diff > 0:  # A is longer: cut A down to B, then alternate (B first on a tie)
        if excess <= diff:
            return excess, 0
        rest = excess - diff
        return diff + rest // 2, (rest + 1) // 2
    if excess <= -diff:
        return 0, excess
    rest = excess + diff
    return rest // 2, -diff + (rest + 1) // 2


def _nsp_instances(
    sent_offsets: np.ndarray, doc_sentences: np.ndarray, cfg: PretrainDataConfig, rng
) -> _Instances:
    """One pass of create_pretraining_data.py's ``create_instances_from_document`` over all docs."""
    offsets = sent_offsets.tolist()  # python ints: this loop is scalar code
    doc_first = doc_sentences.tolist()
    num_docs = len(doc_first) - 1
    max_tokens = cfg.max_seq_length - 3
    random = rng.random
    rows = []  # (a_start, a_len, b_start, b_len, is_random_next)
    for doc in range(num_docs):
        first, end = doc_first[doc], doc_first[doc + 1]
        target = max_tokens
        if random() < cfg.short_seq_prob:
            target = 2 + int(random() * (max_tokens - 1))  # uniform in [2, max_tokens]
        chunk_first, length, i = first, 0, first
        while i < end:
            length += offsets[i + 1] - offsets[i]
            if i == end - 1 or length >= target:
                num_in_chunk = i - chunk_first + 1
                a_end = chunk_first + 1  # sentence index after A
                if num_in_chunk >= 2:
                    a_end += int(random() * (num_in_chunk - 1))
                sa, la = offsets[chunk_first], offsets[a_end] - offsets[chunk_first]
                if num_in_chunk == 1 or random() < 0.5:
                    target_b = target - la
                    if num_docs > 1:
                        other = int(random() * (num_docs - 1))
                        other += other >= doc
                        r_first, r_end = doc_first[other], doc_first[other + 1]
                        start = r_first + int(random() * (r_end - r_first))
                    else:
                        # One document only: start outside this chunk when the document allows.
                        r_first, r_end = first, end
                        outside = (end - first) - num_in_chunk
                        if outside > 0:
                            start = first + int(random() * outside)
                            if start >= chunk_first:
                                start += num_in_chunk
                        else:
                            start = first + int(random() * (end - first))
                    j = start
                    while j < r_end - 1 and offsets[j + 1] - offsets[start] < target_b:
                        j += 1
                    sb, lb = offsets[start], offsets[j + 1] - offsets[start]
                    random_next = True
                    i = a_end - 1  # the chunk's unused sentences go back to the document
                else:
                    sb, lb = offsets[a_end], offsets[i + 1] - offsets[a_end]
                    random_next = False
                cut_a, cut_b = _truncation(la, lb, max_tokens)
                if cut_a:
                    sa += int(rng.binomial(cut_a, 0.5))  # each cut from the front w.p. 1/2
                    la -= cut_a
                if cut_b:
                    sb += int(rng.binomial(cut_b, 0.5))
                    lb -= cut_b
                rows.append((sa, la, sb, lb, random_next))
                chunk_first, length = i + 1, 0
            i += 1
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return _Instances(*table[:, :4].T, table[:, 4].astype(bool))


def _packed_instances(stream_len: int, cfg: PretrainDataConfig) -> _Instances:
    """MLM-only rows: consecutive windows of max_seq_length - 2 tokens (the last may be short)."""
    width = cfg.max_seq_length - 2
    starts = np.arange(0, stream_len, width, dtype=np.int64)
    lengths = np.minimum(width, stream_len - starts)
    zeros = np.zeros_like(starts)
    return _Instances(starts, lengths, zeros, zeros, np.zeros(len(starts), dtype=bool))


# ------------------------------------------------------------------------------ the data


@dataclasses.dataclass(eq=False)
class PretrainingData:
    """Tokenized documents and the batches made from them (see the module docstring)."""

    documents: list  # list[list[np.ndarray]]: int32 ids (no special tokens) per sentence per doc
    special: SpecialTokens
    cfg: PretrainDataConfig

    def __post_init__(self):
        cfg = self.cfg
        minimum = 5 if cfg.nsp else 3
        if cfg.max_seq_length < minimum:
            raise DataError(
                f"data.max_seq_length={cfg.max_seq_length} is too short: "
                f"{'[CLS] A [SEP] B [SEP]' if cfg.nsp else '[CLS] tokens [SEP]'} needs at least "
                f"{minimum}"
            )
        documents = []
        for doc in self.documents:
            sentences = [np.asarray(s, dtype=np.int32).reshape(-1) for s in doc]
            sentences = [s for s in sentences if s.size]
            if sentences:
                documents.append(sentences)
        if not documents:
            raise DataError("the corpus has no tokens (every document is empty)")
        if cfg.whole_word_mask and self.special.continuation is None:
            raise DataError(
                "data.whole_word_mask needs word boundaries, but the tokenizer's vocabulary has "
                "neither WordPiece '##' nor SentencePiece '\u2581' pieces"
            )
        sentences = [s for doc in documents for s in doc]
        if cfg.nsp and len(sentences) < 2:
            raise DataError(
                "the corpus is one sentence, so next-sentence prediction is impossible; "
                "add text or set data.nsp=false"
            )
        self._tokens = np.concatenate(sentences)
        low, high = int(self._tokens.min()), int(self._tokens.max())
        if low < 0 or high >= self.special.vocab_size:
            raise DataError(
                f"token id {high if high >= self.special.vocab_size else low} is outside the "
                f"tokenizer's vocabulary of {self.special.vocab_size}"
            )
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        self._sent_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._doc_sentences = np.concatenate([[0], np.cumsum([len(d) for d in documents])])
        # Sentences become views of the one array (the caller's arrays can be freed).
        pieces = iter(np.split(self._tokens, self._sent_offsets[1:-1]))
        self.documents = [[next(pieces) for _ in doc] for doc in documents]
        if cfg.nsp:
            self._source = self._tokens
        else:  # the stream of documents joined by [SEP]
            doc_ends = self._sent_offsets[self._doc_sentences[1:-1]]
            self._source = np.insert(self._tokens, doc_ends, self.special.sep_id)
        self._max_predictions = _num_predictions(cfg)
        self._cache: OrderedDict = OrderedDict()  # (seed, epoch) -> shuffled _Instances
        self._eval: _Instances | None = None
        self._nominal_instances: int | None = None
        self._lock = threading.RLock()

    # -------------------------------------------------------------------- sizes

    @property
    def max_predictions(self) -> int:
        """P: masked positions per row (``masked_positions`` is [b, P])."""
        return self._max_predictions

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    def num_instances(self, seed: int, epoch: int) -> int:
        """Rows made in one epoch (with NSP it varies a little between epochs)."""
        return len(self._epoch_instances(seed, epoch))

    def steps_per_epoch(self, batch_size: int) -> int:
        """Global batches per epoch: the instance count of (seed 0, epoch 0) // batch_size (>= 1).

        Every epoch yields exactly this many batches, so a step maps to (epoch, batch) without
        building earlier epochs; an epoch with more instances drops its (random) surplus, one with
        fewer wraps around to its first instances.
        """
        if self._nominal_instances is None:
            self._nominal_instances = self.num_instances(0, 0)
        return max(1, self._nominal_instances // batch_size)

    def num_eval_batches(self, batch_size: int) -> int:
        return -(-len(self._eval_instances()) // batch_size)

    # -------------------------------------------------------------------- batches

    def train_batch(
        self,
        step: int,
        *,
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step``: a pure function of (seed, step)."""
        local = _local_batch_size(batch_size, process_count, process_index)
        per_epoch = self.steps_per_epoch(batch_size)
        epoch, index = divmod(step, per_epoch)
        instances = self._epoch_instances(seed, epoch)
        first = index * batch_size + process_index * local
        rows = np.arange(first, first + local) % len(instances)
        uniforms = _row_uniforms(
            [seed, step, _TRAIN_MASK_STREAM], process_index * local, local, self.cfg.max_seq_length
        )
        batch = self._batch(instances.take(rows), uniforms)
        batch["example_weight"] = np.ones(local, dtype=np.float32)
        return batch

    def eval_batches(
        self, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
    ) -> Iterator[dict[str, np.ndarray]]:
        """Every evaluation instance once; the last batch is padded with ``example_weight`` 0 rows.

        The instances are fixed by ``data.split_seed`` (like the held-out documents), the masking
        by ``seed``; both are independent of the batch size and the process count.
        """
        local = _local_batch_size(batch_size, process_count, process_index)
        instances = self._eval_instances()
        total = len(instances)
        length = self.cfg.max_seq_length
        for start in range(0, total, batch_size):
            first = start + process_index * local
            index = np.arange(first, first + local)
            real = index < total
            index = np.where(real, index, 0)  # padding rows repeat instance 0, weighted 0
            uniforms = _row_uniforms([seed, 0, _EVAL_MASK_STREAM], first, local, length)
            if not real.all():  # padding rows: the masks of instance 0, like their tokens
                uniforms[~real] = _row_uniforms([seed, 0, _EVAL_MASK_STREAM], 0, 1, length)[0]
            batch = self._batch(instances.take(index), uniforms)
            batch["masked_weights"] *= real[:, None]
            batch["example_weight"] = real.astype(np.float32)
            yield batch

    def _batch(self, instances: _Instances, uniforms: np.ndarray) -> dict[str, np.ndarray]:
        special, length = self.special, self.cfg.max_seq_length
        j = np.arange(length)[None, :]
        a_start, a_len = instances.a_start[:, None], instances.a_len[:, None]
        b_start, b_len = instances.b_start[:, None], instances.b_len[:, None]
        in_a = (j >= 1) & (j <= a_len)
        in_b = (j >= a_len + 2) & (j < a_len + 2 + b_len)
        sep = (j == a_len + 1) | ((b_len > 0) & (j == a_len + 2 + b_len))
        gather = np.where(in_a, a_start + j - 1, np.where(in_b, b_start + j - a_len - 2, 0))
        ids = np.where(in_a | in_b, self._source[gather], special.pad_id)
        ids = np.where(sep, special.sep_id, ids)
        ids[:, 0] = special.cls_id
        used = a_len + 2 + np.where(b_len > 0, b_len + 1, 0)
        attention = j < used
        masked, positions, labels, weights = _mask_batch(
            ids, uniforms, special=special, cfg=self.cfg, max_predictions=self._max_predictions
        )
        return {
            "input_ids": masked,
            "attention_mask": attention.astype(np.int32),
            "token_type_ids": ((j >= a_len + 2) & attention).astype(np.int32),
            "masked_positions": positions,
            "masked_labels": labels,
            "masked_weights": weights,
            "nsp_labels": instances.is_random_next.astype(np.int32),
        }

    # -------------------------------------------------------------------- instances

    def _create_instances(self, rng: np.random.Generator) -> _Instances:
        if self.cfg.nsp:
            return _nsp_instances(self._sent_offsets, self._doc_sentences, self.cfg, rng)
        return _packed_instances(len(self._source), self.cfg)

    def _epoch_instances(self, seed: int, epoch: int) -> _Instances:
        key = (int(seed), int(epoch))
        with self._lock:  # a prefetching thread and the loop may ask for the same epoch
            if key not in self._cache:
                rng = np.random.default_rng([int(seed), int(epoch)])
                instances = self._create_instances(rng)
                self._cache[key] = instances.take(rng.permutation(len(instances)))
                while len(self._cache) > _EPOCH_CACHE_SIZE:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            return self._cache[key]

    def _eval_instances(self) -> _Instances:
        with self._lock:
            if self._eval is None:
                rng = np.random.default_rng([self.cfg.split_seed, 0, _EVAL_INSTANCE_STREAM])
                self._eval = self._create_instances(rng)
            return self._eval


def _local_batch_size(batch_size: int, process_count: int, process_index: int) -> int:
    if batch_size <= 0 or batch_size % process_count:
        raise DataError(
            f"batch size {batch_size} is not divisible by the process count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is outside [0, {process_count})")
    return batch_size // process_count


# ------------------------------------------------------------------------------ loading


def _tokenize(tokenizer, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Flat int32 ids and per-sentence lengths, tokenized in batches without special tokens."""
    ids_chunks, lengths = [], []
    for start in range(0, len(sentences), _TOKENIZE_CHUNK):
        encoded = tokenizer(
            sentences[start : start + _TOKENIZE_CHUNK],
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than model_max_length" warnings: rows are cut here
        )["input_ids"]
        chunk_lengths = [len(ids) for ids in encoded]
        lengths.extend(chunk_lengths)
        ids_chunks.append(
            np.fromiter(itertools.chain.from_iterable(encoded), np.int32, sum(chunk_lengths))
        )
    return np.concatenate(ids_chunks), np.array(lengths, dtype=np.int64)


def _as_documents(
    tokens: np.ndarray, lengths: np.ndarray, doc_sizes: list[int], max_piece: int | None
) -> list[list[np.ndarray]]:
    """Views of ``tokens`` per sentence per document; sentences over ``max_piece`` tokens are cut
    into pieces (so a long unpunctuated line is not lost to pair truncation); empty ones dropped."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    doc_bounds = np.concatenate([[0], np.cumsum(doc_sizes)]).tolist()
    documents = []
    for d in range(len(doc_sizes)):
        sentences = []
        for s in range(doc_bounds[d], doc_bounds[d + 1]):
            begin, end = int(offsets[s]), int(offsets[s + 1])
            step = max_piece or max(end - begin, 1)
            sentences.extend(tokens[p : min(p + step, end)] for p in range(begin, end, step))
        if sentences:
            documents.append(sentences)
    return documents


def load_pretraining_data(
    cfg: PretrainDataConfig, tokenizer, *, model_vocab_size: int
) -> tuple[PretrainingData, PretrainingData | None]:
    """Reads, tokenizes and splits the corpus: (train, validation or None when the fraction is 0).

    ``cfg.validation_fraction`` of the documents (at least one) are held out, chosen with
    ``cfg.split_seed``. Raises DataError when the tokenizer does not fit the model's vocabulary or
    lacks a special token BERT needs, and for the input problems of :func:`read_documents`.
    """
    special = SpecialTokens.from_tokenizer(tokenizer)
    if special.vocab_size > model_vocab_size:
        raise DataError(
            f"the tokenizer has {special.vocab_size} tokens but the model's vocabulary has only "
            f"{model_vocab_size}: use the tokenizer the model was trained with (model.tokenizer) "
            "or a model with vocab_size >= the tokenizer's"
        )
    texts = read_documents(cfg)
    sentences = [s for doc in texts for s in doc]
    tokens, lengths = _tokenize(tokenizer, sentences)
    max_piece = cfg.max_seq_length - 3 if cfg.nsp else None
    documents = _as_documents(tokens, lengths, [len(d) for d in texts], max_piece)
    if not documents:
        raise DataError("the corpus tokenizes to no tokens at all")

    num_eval = 0
    if cfg.validation_fraction > 0:
        num_eval = max(1, round(cfg.validation_fraction * len(documents)))
        if num_eval >= len(documents):
            raise DataError(
                f"data.validation_fraction={cfg.validation_fraction} holds out {num_eval} of "
                f"{len(documents)} documents, leaving none to train on; separate documents with "
                "blank lines, or set data.validation_fraction=0"
            )
    order = np.random.default_rng(cfg.split_seed).permutation(len(documents))
    held_out = set(order[:num_eval].tolist())
    train_docs = [d for i, d in enumerate(documents) if i not in held_out]
    eval_docs = [d for i, d in enumerate(documents) if i in held_out]
    if cfg.nsp and num_eval and sum(len(d) for d in eval_docs) < 2:
        raise DataError(
            f"data.validation_fraction={cfg.validation_fraction} holds out {num_eval} document(s) "
            "with a single sentence: too little for next-sentence prediction; raise the fraction"
        )
    train = PretrainingData(train_docs, special, cfg)
    return train, (PretrainingData(eval_docs, special, cfg) if num_eval else None)


def unigram_baseline_accuracy(
    train: PretrainingData, eval: PretrainingData, *, batch_size: int, seed: int
) -> float:
    """Masked-LM accuracy of always predicting the training corpus's most frequent token.

    Counted at exactly the positions ``eval.eval_batches(batch_size=..., seed=...)`` masks: the
    floor a pretrained model's masked-LM accuracy should clear.
    """
    counts = np.bincount(train._tokens, minlength=train.special.vocab_size)
    counts[list(train.special.never_mask)] = 0
    most_frequent = int(np.argmax(counts))
    hits = total = 0.0
    for batch in eval.eval_batches(batch_size=batch_size, seed=seed):
        weights = batch["masked_weights"] * batch["example_weight"][:, None]
        hits += float((weights * (batch["masked_labels"] == most_frequent)).sum())
        total += float(weights.sum())
    return hits / total if total else 0.0


def nsp_baseline_accuracy(eval: PretrainingData) -> float:
    """Next-sentence accuracy of always predicting the more frequent label of ``eval``'s pairs."""
    is_random_next = eval._eval_instances().is_random_next
    share = float(is_random_next.mean()) if len(is_random_next) else 0.0
    return max(share, 1.0 - share)
