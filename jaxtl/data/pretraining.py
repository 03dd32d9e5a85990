"""BERT pretraining data: a tokenized corpus and the NSP / packed instances made from it.

The recipe is the original one (google-research/bert ``create_pretraining_data.py``), re-done so
that every batch is a pure function of ``(seed, step)``:

* **Text → documents → sentences** is :mod:`jaxtl.data.text`; here the sentences are tokenized
  (no special tokens) into one flat int32 array.
* **Instances** of epoch ``e`` come from ``np.random.default_rng([seed, e])``: with NSP, each
  document is cut into chunks of consecutive sentences up to a target length (``max_seq_length -
  3``, or with ``short_seq_prob`` a random shorter one); segment A is the chunk's first sentences,
  B the true continuation (``nsp_labels`` 0) or, with probability 1/2, text from a random other
  document (label 1; the unused sentences go back to the document). The pair is truncated to fit,
  one token at a time from the longer segment's front or back. Without NSP the token stream
  (documents joined by ``[SEP]``) is packed into full ``[CLS] ... [SEP]`` rows. An instance is
  four offsets into one token array, so an epoch of a large corpus costs little memory.
* **Masking** is :mod:`jaxtl.data.masking`; **batches** are
  :class:`jaxtl.data.batching.PretrainingBatcher`.

    train, val = load_pretraining_data(cfg.data, tokenizer, model_vocab_size=model_cfg.vocab_size)
    batches = PretrainingBatcher(train, batch_size=256, seed=0)

This path holds the whole corpus in memory and builds each epoch's instances at once: for a
small corpus. For corpus scale, :mod:`jaxtl.data.prepared` (``data.prepared_dir``) tokenizes once
into memory-mapped shards and makes instances lazily, batch by batch; both give the batcher the
same interface (``train_rows`` / ``eval_rows``: instances plus the token array they index).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from jaxtl.config import PretrainDataConfig
from jaxtl.data.masking import SpecialTokens, check_word_boundaries, num_predictions
from jaxtl.data.text import file_documents, read_documents
from jaxtl.errors import DataError

# The third seed word of the evaluation instances (jaxtl.data.masking uses 1 and 3 for masks).
EVAL_INSTANCE_STREAM = 2
_TOKENIZE_CHUNK = 8192  # sentences per tokenizer call
_EPOCH_CACHE_SIZE = 2  # epochs of instances kept (the current one and, around a boundary, the next)


# ------------------------------------------------------------------------------ instances


@dataclasses.dataclass(frozen=True)
class Instances:
    """Rows ``[CLS] A [SEP] B [SEP]`` as offsets into a token array (b_len 0: ``[CLS] A [SEP]``)."""

    a_start: np.ndarray  # int64 [N]
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    is_random_next: np.ndarray  # bool [N]

    def take(self, index: np.ndarray) -> Instances:
        return Instances(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

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
) -> Instances:
    """One pass of create_pretraining_data.py's ``create_instances_from_document`` over all docs
    (with ``cfg.sop``, ALBERT's: B the true continuation, the pair swapped with probability 1/2;
    ``is_random_next`` then means swapped)."""
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
                if cfg.sop:  # B is A's continuation (a one-sentence chunk: its second half)
                    if num_in_chunk == 1:
                        la = (la + 1) // 2
                        sb, lb = sa + la, offsets[a_end] - sa - la
                    else:
                        sb, lb = offsets[a_end], offsets[i + 1] - offsets[a_end]
                    random_next = random() < 0.5  # here: the two are swapped
                elif num_in_chunk == 1 or random() < 0.5:
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
                if cfg.sop and random_next:
                    sa, la, sb, lb = sb, lb, sa, la
                rows.append((sa, la, sb, lb, random_next))
                chunk_first, length = i + 1, 0
            i += 1
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return Instances(*table[:, :4].T, table[:, 4].astype(bool))


def _packed_instances(stream_len: int, cfg: PretrainDataConfig) -> Instances:
    """MLM-only rows: consecutive windows of max_seq_length - 2 tokens (the last may be short)."""
    width = cfg.max_seq_length - 2
    starts = np.arange(0, stream_len, width, dtype=np.int64)
    lengths = np.minimum(width, stream_len - starts)
    zeros = np.zeros_like(starts)
    return Instances(starts, lengths, zeros, zeros, np.zeros(len(starts), dtype=bool))


# ------------------------------------------------------------------------------ the data


@dataclasses.dataclass(eq=False)
class PretrainingData:
    """Tokenized documents and the instances made from them, per (seed, epoch)."""

    documents: list  # list[list[np.ndarray]]: int32 ids (no special tokens) per sentence per doc
    special: SpecialTokens
    cfg: PretrainDataConfig

    def __post_init__(self):
        cfg = self.cfg
        minimum = 5 if cfg.pairs else 3
        if cfg.max_seq_length < minimum:
            raise DataError(
                f"data.max_seq_length={cfg.max_seq_length} is too short: "
                f"{'[CLS] A [SEP] B [SEP]' if cfg.pairs else '[CLS] tokens [SEP]'} needs at least "
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
        check_word_boundaries(self.special, cfg)
        sentences = [s for doc in documents for s in doc]
        if cfg.pairs and len(sentences) < 2:
            raise DataError(
                "the corpus is one sentence, so next-sentence prediction is impossible; "
                "add text or set data.nsp=false"
            )
        self.tokens = np.concatenate(sentences)  # int32 [T]
        low, high = int(self.tokens.min()), int(self.tokens.max())
        if low < 0 or high >= self.special.vocab_size:
            raise DataError(
                f"token id {high if high >= self.special.vocab_size else low} is outside the "
                f"tokenizer's vocabulary of {self.special.vocab_size}"
            )
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        self.sentence_offsets = np.concatenate([[0], np.cumsum(lengths)])  # int64 [S+1]
        self.document_sentences = np.concatenate([[0], np.cumsum([len(d) for d in documents])])
        # Sentences become views of the one array (the caller's arrays can be freed).
        pieces = iter(np.split(self.tokens, self.sentence_offsets[1:-1]))
        self.documents = [[next(pieces) for _ in doc] for doc in documents]
        if cfg.pairs:
            self.stream = self.tokens
        else:  # the stream of documents joined by [SEP]
            doc_ends = self.sentence_offsets[self.document_sentences[1:-1]]
            self.stream = np.insert(self.tokens, doc_ends, self.special.sep_id)
        self.max_predictions = num_predictions(cfg)  # P: masked_positions is [b, P]
        self._cache: OrderedDict = OrderedDict()  # (seed, epoch) -> shuffled Instances
        self._eval: Instances | None = None
        self._nominal_instances: int | None = None
        self._lock = threading.RLock()

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def num_instances(self, seed: int, epoch: int) -> int:
        """Rows made in one epoch (with NSP it varies a little between epochs)."""
        return len(self.epoch_instances(seed, epoch))

    def steps_per_epoch(self, batch_size: int) -> int:
        """Global batches per epoch: the instance count of (seed 0, epoch 0) // batch_size (>= 1).

        Every epoch yields exactly this many batches, so a step maps to (epoch, batch) without
        building earlier epochs; an epoch with more instances drops its (random) surplus, one with
        fewer wraps around to its first instances.
        """
        if self._nominal_instances is None:
            self._nominal_instances = self.num_instances(0, 0)
        return max(1, self._nominal_instances // batch_size)

    def _create_instances(self, rng: np.random.Generator) -> Instances:
        if self.cfg.pairs:
            return _nsp_instances(self.sentence_offsets, self.document_sentences, self.cfg, rng)
        return _packed_instances(len(self.stream), self.cfg)

    def epoch_instances(self, seed: int, epoch: int) -> Instances:
        """The instances of one training epoch, shuffled with ``default_rng([seed, epoch])``."""
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

    def train_rows(self, seed: int, epoch: int, rows: np.ndarray) -> tuple[Instances, np.ndarray]:
        """Instances ``rows`` of an epoch (wrapping around) and the token array they index."""
        instances = self.epoch_instances(seed, epoch)
        return instances.take(np.asarray(rows) % len(instances)), self.stream

    def num_eval_instances(self) -> int:
        return len(self.eval_instances())

    def eval_rows(self, index: np.ndarray) -> tuple[Instances, np.ndarray]:
        return self.eval_instances().take(index), self.stream

    def eval_nsp_labels(self) -> np.ndarray:
        """bool [N]: the evaluation instances' labels (True: B is a random next)."""
        return self.eval_instances().is_random_next

    @property
    def most_frequent_token(self) -> int:
        """The most frequent id of the corpus among those that can be masked."""
        counts = np.bincount(self.tokens, minlength=self.special.vocab_size)
        counts[list(self.special.never_mask)] = 0
        return int(np.argmax(counts))

    def eval_instances(self) -> Instances:
        """The evaluation instances: fixed by ``data.split_seed``, whatever the training seed."""
        with self._lock:
            if self._eval is None:
                rng = np.random.default_rng([self.cfg.split_seed, 0, EVAL_INSTANCE_STREAM])
                self._eval = self._create_instances(rng)
            return self._eval


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


def _tokenized_documents(tokenizer, texts: list[list[str]], cfg: PretrainDataConfig) -> list:
    sentences = [s for doc in texts for s in doc]
    if not sentences:
        return []
    tokens, lengths = _tokenize(tokenizer, sentences)
    max_piece = cfg.max_seq_length - 3 if cfg.pairs else None
    return _as_documents(tokens, lengths, [len(d) for d in texts], max_piece)


def load_pretraining_data(
    cfg: PretrainDataConfig, tokenizer, *, model_vocab_size: int
) -> tuple[PretrainingData, PretrainingData | None]:
    """Reads, tokenizes and splits the corpus: (train, validation or None when the fraction is 0).

    The documents of ``cfg.validation_files`` are the validation set when it is given; otherwise
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
    documents = _tokenized_documents(tokenizer, texts, cfg)
    if not documents:
        raise DataError("the corpus tokenizes to no tokens at all")
    if cfg.validation_files:
        source, held_out_texts = file_documents(list(cfg.validation_files), "data.validation_files")
        eval_docs = _tokenized_documents(tokenizer, held_out_texts, cfg)
        if not eval_docs or (cfg.pairs and sum(len(d) for d in eval_docs) < 2):
            needs = ", or one sentence: a sentence pair needs two" if cfg.pairs else ""
            raise DataError(f"{source}: too little text to evaluate on (no tokens{needs})")
        return PretrainingData(documents, special, cfg), PretrainingData(eval_docs, special, cfg)

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
    if cfg.pairs and num_eval and sum(len(d) for d in eval_docs) < 2:
        raise DataError(
            f"data.validation_fraction={cfg.validation_fraction} holds out {num_eval} document(s) "
            "with a single sentence: too little for next-sentence prediction; raise the fraction"
        )
    train = PretrainingData(train_docs, special, cfg)
    return train, (PretrainingData(eval_docs, special, cfg) if num_eval else None)


def unigram_baseline_accuracy(train, eval_batches: Iterable[dict]) -> float:
    """Masked-LM accuracy of always predicting the training corpus's most frequent token.

    Counted at exactly the positions ``eval_batches`` (a batcher's ``eval_batches()``) masks: the
    floor a pretrained model's masked-LM accuracy should clear.
    """
    most_frequent = train.most_frequent_token
    hits = total = 0.0
    for batch in eval_batches:
        weights = batch["masked_weights"] * batch["example_weight"][:, None]
        hits += float((weights * (batch["masked_labels"] == most_frequent)).sum())
        total += float(weights.sum())
    return hits / total if total else 0.0


def nsp_baseline_accuracy(eval) -> float:
    """Next-sentence accuracy of always predicting the more frequent label of ``eval``'s pairs
    (:class:`PretrainingData` or :class:`jaxtl.data.prepared.PreparedCorpus`)."""
    is_random_next = eval.eval_nsp_labels()
    share = float(is_random_next.mean()) if len(is_random_next) else 0.0
    return max(share, 1.0 - share)
