"""Batches for every task behind one interface: :class:`Batcher`.

    train = ClassificationBatcher(data.train, batch_size=32, seed=0, bucket_sizes=[32, 64, 128],
                                  process_index=0, process_count=1)  # jax.process_index(), ...
    batch = train.train_batch(step)           # this process's rows of global batch `step`
    for batch in validation.eval_batches():   # every example once; validation.num_eval_batches
        ...

A batcher is made once per split with what does not change between calls — the global batch
size, the seed, the bucket lengths, this process's place — and reads the rest from the data: the
length examples were cut to and the pad id (a classification :class:`Split`), or the row length
and special ids (:class:`PretrainingData`). Batches are numpy arrays, a pure function of
``(seed, step)``: a resumed run sees exactly the batches it would have seen.

Every process computes the same global batch plan and keeps rows ``[p*b, (p+1)*b)``, ``b =
batch_size // process_count`` (:func:`local_rows`). Evaluation visits every example once; the last
global batch is filled up with padding rows whose ``example_weight`` is 0 and ``index`` -1.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Sequence

import numpy as np

from jaxtl.data.classification import Split
from jaxtl.data.masking import EVAL_MASK_STREAM, TRAIN_MASK_STREAM, mask_batch, mask_uniforms
from jaxtl.data.pretraining import Instances, PretrainingData
from jaxtl.errors import DataError

# Sortish bucketing sorts windows of this many batches by length: batches of similar lengths pad
# little, while the window keeps enough randomness in which examples share a batch.
SORT_WINDOW_BATCHES = 50


def local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """This process's rows of a global batch of ``batch_size`` rows."""
    if batch_size <= 0 or batch_size % process_count:
        raise DataError(
            f"batch size {batch_size} is not divisible by the {process_count} processes"
        )
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is outside 0..{process_count - 1}")
    rows = batch_size // process_count
    return slice(process_index * rows, (process_index + 1) * rows)


def _eval_plan(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Global batches [batch_size] of the rows ``order``, in order; -1 fills up the last one."""
    for start in range(0, len(order), batch_size):
        rows_B = np.full(batch_size, -1, np.int64)
        chunk = order[start : start + batch_size]
        rows_B[: len(chunk)] = chunk
        yield rows_B


def pack_first_fit_decreasing(lengths: Sequence[int], row_length: int, max_per_row: int) -> list[list[int]]:
    """Examples packed into rows of ``row_length`` tokens: longest first (ties in index order),
    each into the first row with room for its tokens and fewer than ``max_per_row`` examples,
    else a new row. Returns each row's example indices (into ``lengths``) in placing order;
    every example exactly once, none split. Deterministic."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and lengths.max() > row_length:
        raise DataError(f"an example of {lengths.max()} tokens does not fit a row of {row_length}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        r = next((r for r, free in enumerate(room) if free >= n and len(rows[r]) < max_per_row), None)
        if r is None:
            rows.append([i])
            room.append(row_length - n)
        else:
            rows[r].append(i)
            room[r] -= n
    return rows


class Batcher(abc.ABC):
    """This process's batches of one split; see the module docstring."""

    def __init__(self, *, batch_size: int, seed: int, process_index: int, process_count: int):
        self.batch_size = batch_size
        self.seed = seed
        self.local = local_rows(batch_size, process_index, process_count)

    @property
    @abc.abstractmethod
    def steps_per_epoch(self) -> int:
        """Global training batches per epoch."""

    @property
    @abc.abstractmethod
    def num_eval_batches(self) -> int:
        """Batches :meth:`eval_batches` yields."""

    @abc.abstractmethod
    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of training batch ``step`` (a pure function of seed and step)."""

    @abc.abstractmethod
    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Every example once, in global batches; ``index`` [b] int32 names each row's example
        (-1 on padding rows, whose ``example_weight`` is 0)."""


# ---------------------------------------------------------------------------- classification


class ClassificationBatcher(Batcher):
    """Bucketed batches of a tokenized :class:`Split` (text or text-pair classification).

    Epoch ``step // steps_per_epoch`` shuffles with ``default_rng([seed, epoch])``; windows of
    ``50 * batch_size`` examples are sorted by length and cut into batches, whose order is then
    shuffled; the remainder of an epoch is dropped (a different one each epoch). A global batch is
    padded to the smallest of ``bucket_sizes`` (those up to the split's ``max_seq_length``, which
    is always one) that fits its longest row, so a jitted step compiles a handful of shapes.

    Batches hold int32 ``input_ids``, ``attention_mask``, ``token_type_ids`` [b, L]; ``labels``
    [b] (int32, float32 for regression; float32 multi-hot [b, num_labels] for multi-label; only
    when the split has labels); ``example_weight`` [b]
    float32; evaluation batches also ``index``. Evaluation goes shortest first (tight padding).

    With ``packing``, training batch ``step`` holds the same ``batch_size`` examples, packed
    several to a row (:func:`pack_first_fit_decreasing`, at most :attr:`slots` per row). The row
    count R is rounded up to a multiple of :attr:`row_quantum` (``batch_size // 8``, made
    divisible by ``row_multiple`` — the batch shards — and the process count; added rows are all
    padding), and the row length L is the one of ``bucket_sizes`` (up to ``max_seq_length``) that
    gives the fewest R x L tokens: at most 8-9 row counts times the bucket lengths compile. Packed
    batches hold int32 ``input_ids``, ``token_type_ids``, ``segment_ids`` (k+1 on the tokens of
    the row's k-th example, 0 on padding: examples attend only within their segment) and
    ``position_ids`` (each example counted from ``first_position``) [r, L]; ``cls_positions``
    (where each example starts), ``labels`` and ``example_weight`` (0 for an empty slot)
    [r, slots]. Evaluation is never packed.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        seed: int = 0,
        bucket_sizes=(),
        process_index: int = 0,
        process_count: int = 1,
        packing: bool = False,
        row_multiple: int = 1,
        first_position: int = 0,
    ):
        super().__init__(
            batch_size=batch_size, seed=seed,
            process_index=process_index, process_count=process_count,
        )  # fmt: skip
        self.split = split
        longest = split.max_seq_length
        self.buckets = sorted({int(b) for b in bucket_sizes if b <= longest} | {longest})
        self.lengths = np.fromiter((len(x) for x in split.input_ids), np.int64, len(split))
        if len(split) and self.lengths.max() > longest:
            raise DataError(
                f"{split.source}: an example has {self.lengths.max()} tokens, more than the "
                f"split's max_seq_length={longest}"
            )
        self._plan: tuple[int, np.ndarray] | None = None  # (epoch, plan): only the current epoch
        self.packing = packing
        self.first_position = first_position
        self.process_index, self.process_count = process_index, process_count
        # Slots per packed row: as many of the split's shortest examples as fit, so the slot
        # bound never splits a batch into more rows than the tokens need; fixed per split (one
        # label shape for the whole run).
        shortest = int(self.lengths.min()) if len(split) else 1
        self.slots = max(1, min(batch_size, longest // max(1, shortest)))
        self.row_quantum = math.lcm(max(1, batch_size // 8), row_multiple, process_count)

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch (the remainder is dropped; a new permutation each epoch)."""
        steps = len(self.split) // self.batch_size
        if steps == 0:
            raise DataError(
                f"{len(self.split)} training examples are fewer than one batch of "
                f"train.batch_size={self.batch_size}"
            )
        return steps

    @property
    def num_eval_batches(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        if self.split.labels is None:
            raise DataError(
                f"{self.split.source}: training needs labels (column missing or hidden)"
            )
        epoch, index = divmod(step, self.steps_per_epoch)
        rows_B = self._epoch_plan(epoch)[index]
        return self._pack(rows_B) if self.packing else self._assemble(rows_B)

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        for rows_B in _eval_plan(np.argsort(self.lengths, kind="stable"), self.batch_size):
            batch = self._assemble(rows_B)
            batch["index"] = rows_B[self.local].astype(np.int32)
            yield batch

    def _epoch_plan(self, epoch: int) -> np.ndarray:
        """Global example indices [steps_per_epoch, batch_size] of one epoch."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        n, batch_size, steps = len(self.split), self.batch_size, self.steps_per_epoch
        rng = np.random.default_rng([self.seed, epoch])
        # Drop the remainder before sorting, so the examples left out are random, not the longest.
        perm = rng.permutation(n)[: steps * batch_size]
        window = batch_size * SORT_WINDOW_BATCHES
        sortish = np.concatenate(
            [
                chunk[np.argsort(self.lengths[chunk], kind="stable")]
                for chunk in np.split(perm, range(window, len(perm), window))
            ]
        )
        plan = sortish.reshape(steps, batch_size)[rng.permutation(steps)]
        self._plan = (epoch, plan)  # memory stays O(examples)
        return plan

    def _assemble(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        """Pad global batch rows (-1: a padding row) to one bucket; keep this process's slice."""
        split, lengths = self.split, self.lengths
        real = rows_B[rows_B >= 0]
        longest = int(lengths[real].max()) if len(real) else 1
        seq_len = next(b for b in self.buckets if b >= longest)  # one shape for the whole batch
        rows_b = rows_B[self.local]
        b = len(rows_b)
        input_ids = np.full((b, seq_len), split.pad_id, np.int32)
        attention_mask = np.zeros((b, seq_len), np.int32)
        token_type_ids = np.zeros((b, seq_len), np.int32)
        # int ids [b], or float targets [b] (regression) / multi-hot rows [b, num_labels]
        label_shape, label_dtype = (b,), np.int32
        if split.labels is not None:
            label_shape, label_dtype = (b, *split.labels.shape[1:]), split.labels.dtype
        labels = np.zeros(label_shape, label_dtype)
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

    def _pack(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        """Global batch examples ``rows_B`` packed into rows; keep this process's rows."""
        split, lengths, P, q = self.split, self.lengths, self.slots, self.row_quantum
        # The row length: of the bucket lengths that fit the longest example, the one with the
        # fewest tokens in all (ties: the shorter rows, less attention work).
        candidates = []
        for L in (b for b in self.buckets if b >= lengths[rows_B].max()):
            packed = pack_first_fit_decreasing(lengths[rows_B], L, P)
            R = -(-len(packed) // q) * q
            candidates.append((R * L, L, R, packed))
        _, L, R, packed = min(candidates, key=lambda c: c[:2])
        input_ids = np.full((R, L), split.pad_id, np.int32)
        token_type_ids = np.zeros((R, L), np.int32)
        segment_ids = np.zeros((R, L), np.int32)
        position_ids = np.zeros((R, L), np.int32)
        cls_positions = np.zeros((R, P), np.int32)
        regression = split.labels.dtype == np.float32
        labels = np.zeros((R, P), np.float32 if regression else np.int32)
        weight = np.zeros((R, P), np.float32)
        for r, members in enumerate(packed):
            start = 0
            for k, member in enumerate(members):
                example = rows_B[member]
                n = lengths[example]
                tokens = slice(start, start + n)
                input_ids[r, tokens] = split.input_ids[example]
                token_type_ids[r, tokens] = split.token_type_ids[example]
                segment_ids[r, tokens] = k + 1
                position_ids[r, tokens] = np.arange(self.first_position, self.first_position + n)
                cls_positions[r, k] = start
                labels[r, k] = split.labels[example]
                weight[r, k] = 1.0
                start += n
        local = R // self.process_count
        mine = slice(self.process_index * local, (self.process_index + 1) * local)
        batch = {
            "input_ids": input_ids, "token_type_ids": token_type_ids, "segment_ids": segment_ids,
            "position_ids": position_ids, "cls_positions": cls_positions, "labels": labels,
            "example_weight": weight,
        }
        return {key: value[mine] for key, value in batch.items()}


# ---------------------------------------------------------------------------- pretraining


class PretrainingBatcher(Batcher):
    """Masked-LM (+ NSP) batches of :class:`PretrainingData` (in memory) or
    :class:`jaxtl.data.prepared.PreparedCorpus` (memory-mapped shards, instances made lazily),
    every row ``max_seq_length`` long.

    Training batch ``step`` holds instances ``[i*B, (i+1)*B)`` of epoch ``step //
    steps_per_epoch`` (wrapping around in an epoch with fewer); its masks come from the stream
    ``[seed, step, 1]``, row by global row. Evaluation instances are fixed by ``data.split_seed``
    and masked from ``[seed, 0, 3]``, so they are the same whatever the batch size and the
    process count; padding rows repeat instance 0 and its masks, weighted 0.

    Batches hold int32 ``input_ids``, ``attention_mask``, ``token_type_ids`` [b, L];
    ``masked_positions``, ``masked_labels`` int32 and ``masked_weights`` float32 [b, P];
    ``nsp_labels`` int32 [b] (1: B is a random next; with ``data.sop`` ``sop_labels``, 1: A and
    B swapped); ``example_weight`` float32 [b];
    evaluation batches also ``index``. The data gives this process's rows as instances plus the
    token array their offsets index (``data.train_rows`` / ``data.eval_rows``).
    """

    def __init__(
        self,
        data: PretrainingData,
        *,
        batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__(
            batch_size=batch_size, seed=seed,
            process_index=process_index, process_count=process_count,
        )  # fmt: skip
        self.data = data

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch(self.batch_size)

    @property
    def num_eval_batches(self) -> int:
        return -(-self.data.num_eval_instances() // self.batch_size)

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, index = divmod(step, self.steps_per_epoch)
        first, b = index * self.batch_size + self.local.start, self.local.stop - self.local.start
        instances, stream = self.data.train_rows(self.seed, epoch, np.arange(first, first + b))
        length = self.data.cfg.max_seq_length
        uniforms = mask_uniforms(self.seed, step, TRAIN_MASK_STREAM, self.local.start, b, length)
        batch = self._batch(instances, stream, uniforms)
        batch["example_weight"] = np.ones(b, dtype=np.float32)
        return batch

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        num_instances = self.data.num_eval_instances()
        length = self.data.cfg.max_seq_length
        b = self.local.stop - self.local.start
        for start, rows_B in zip(
            range(0, num_instances, self.batch_size),
            _eval_plan(np.arange(num_instances), self.batch_size),
        ):
            index = rows_B[self.local]
            real = index >= 0
            first = start + self.local.start
            uniforms = mask_uniforms(self.seed, 0, EVAL_MASK_STREAM, first, b, length)
            if not real.all():  # padding rows: the masks of instance 0, like their tokens
                uniforms[~real] = mask_uniforms(self.seed, 0, EVAL_MASK_STREAM, 0, 1, length)[0]
            instances, stream = self.data.eval_rows(np.where(real, index, 0))
            batch = self._batch(instances, stream, uniforms)
            batch["masked_weights"] *= real[:, None]
            batch["example_weight"] = real.astype(np.float32)
            batch["index"] = index.astype(np.int32)
            yield batch

    def _batch(
        self, instances: Instances, stream: np.ndarray, uniforms: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Rows ``[CLS] A [SEP] B [SEP]`` (or ``[CLS] A [SEP]``) padded to L, then masked;
        ``instances`` are offsets into the token ids ``stream``."""
        data = self.data
        special, length = data.special, data.cfg.max_seq_length
        j = np.arange(length)[None, :]
        a_start, a_len = instances.a_start[:, None], instances.a_len[:, None]
        b_start, b_len = instances.b_start[:, None], instances.b_len[:, None]
        in_a = (j >= 1) & (j <= a_len)
        in_b = (j >= a_len + 2) & (j < a_len + 2 + b_len)
        sep = (j == a_len + 1) | ((b_len > 0) & (j == a_len + 2 + b_len))
        gather = np.where(in_a, a_start + j - 1, np.where(in_b, b_start + j - a_len - 2, 0))
        ids = np.where(in_a | in_b, stream[gather] if len(stream) else 0, special.pad_id)
        ids = np.where(sep, special.sep_id, ids)
        ids[:, 0] = special.cls_id
        used = a_len + 2 + np.where(b_len > 0, b_len + 1, 0)
        attention = j < used
        masked, positions, labels, weights = mask_batch(
            ids, uniforms, special=special, cfg=data.cfg, max_predictions=data.max_predictions
        )
        return {
            "input_ids": masked,
            "attention_mask": attention.astype(np.int32),
            "token_type_ids": ((j >= a_len + 2) & attention).astype(np.int32),
            "masked_positions": positions,
            "masked_labels": labels,
            "masked_weights": weights,
            # SOP: 1 when A and B are swapped (AlbertForPreTraining's sentence_order_label).
            "sop_labels" if data.cfg.sop else "nsp_labels": (
                instances.is_random_next.astype(np.int32)),
        }
