"""Masked-LM masking: BERT's 15% of tokens, 80% [MASK] / 10% random / 10% unchanged, optionally
whole words, as pure functions of the random numbers they are given.

    special = SpecialTokens.from_tokenizer(tokenizer)
    uniforms = mask_uniforms(seed, step, TRAIN_MASK_STREAM, first_row, num_rows, length)
    masked, positions, labels, weights = mask_batch(ids, uniforms, special=special, cfg=cfg,
                                                    max_predictions=num_predictions(cfg))

Row ``r`` of a global batch draws the ``r``-th block of ``3 * length`` uniforms of the stream
``[seed, step, stream]``; :func:`mask_uniforms` jumps straight to a process's first row, so a
row's masks do not depend on how the batch is split over processes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from jaxtl.config import PretrainDataConfig
from jaxtl.errors import DataError

# Third words of the seed sequences (numpy's SeedSequence pads with zeros, so [s, e] == [s, e, 0]:
# the streams must differ in a nonzero word, not in length). Stream 2 is
# jaxtl.data.pretraining.EVAL_INSTANCE_STREAM.
TRAIN_MASK_STREAM = 1
EVAL_MASK_STREAM = 3
_UNIFORMS_PER_TOKEN = 3  # selection score, 80/10/10 action, random replacement id
_NO_WORD_BOUNDARIES = (
    "data.whole_word_mask needs word boundaries, but the tokenizer's vocabulary has neither "
    "WordPiece '##' nor SentencePiece '\u2581' pieces"
)


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


def check_word_boundaries(special: SpecialTokens, cfg: PretrainDataConfig) -> None:
    """DataError when ``cfg.whole_word_mask`` is asked of a vocabulary without word boundaries."""
    if cfg.whole_word_mask and special.continuation is None:
        raise DataError(_NO_WORD_BOUNDARIES)


def num_predictions(cfg: PretrainDataConfig) -> int:
    """P, the masked positions per row: cfg.max_predictions, else ceil(p * L) + 1."""
    length = cfg.max_seq_length
    if cfg.max_predictions is not None:
        return max(1, min(cfg.max_predictions, length))
    # round(p * eligible) <= ceil(p * L) always, so this never cuts a row's masks short.
    return min(math.ceil(cfg.mlm_probability * length) + 1, length)


def mask_uniforms(
    seed: int, step: int, stream: int, first_row: int, num_rows: int, length: int
) -> np.ndarray:
    """Uniforms [num_rows, 3, L] of rows first_row.. of stream ``[seed, step, stream]``.

    A float64 from numpy's Generator.random consumes exactly one PCG64 output, so advancing the
    bit generator by the skipped count lands on the same numbers a full draw would give.
    """
    bit_generator = np.random.PCG64(np.random.SeedSequence([seed, step, stream]))
    bit_generator.advance(first_row * _UNIFORMS_PER_TOKEN * length)
    return np.random.Generator(bit_generator).random((num_rows, _UNIFORMS_PER_TOKEN, length))


def mask_batch(
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
                raise DataError(_NO_WORD_BOUNDARIES)
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
    masked, positions, labels, weights = mask_batch(
        ids[None],
        uniforms[None],
        special=special,
        cfg=cfg,
        max_predictions=max_predictions,
        word_starts=starts,
    )
    return masked[0], positions[0], labels[0], weights[0]
