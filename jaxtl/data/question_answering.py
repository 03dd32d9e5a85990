"""Extractive question answering data: SQuAD v1.1/v2.0 examples, their token windows, batches.

    examples = read_squad_file("dev-v1.1.json")
    features = featurize(examples, tokenizer, max_seq_length=384, doc_stride=128,
                         max_query_length=64, source="dev-v1.1.json")
    batches = QABatcher(features, batch_size=24, bucket_sizes=[128, 256, 384])

A question and its context become one or more windows ``[CLS] question [SEP] context [SEP]``:
a context longer than ``max_seq_length`` allows is covered by windows that overlap by
``doc_stride`` tokens (HF's ``truncation="only_second"`` with ``return_overflowing_tokens``).
Character answers become token spans through the offset mapping; a window that does not hold the
whole answer (and every window of an unanswerable v2 question) points at [CLS] (index 0). Every
window keeps its example's index and, for its context tokens, the character offsets that
post-processing (:func:`postprocess`) turns back into answer text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxtl.data.batching import ClassificationBatcher
from jaxtl.data.sources import HubDataset, local_path, read_text
from jaxtl.errors import DataError


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset of the answer in the context


@dataclasses.dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]  # empty: no answer (v2) or unknown (prediction input)
    is_impossible: bool = False  # v2: the question has no answer in the context


@dataclasses.dataclass
class QAFeatures:
    """Token windows of one split. Window i is ``input_ids[i]`` (int32, with [CLS]/[SEP]s)."""

    name: str  # "train" / "validation" / "predict"
    source: str  # file path or dataset name, for messages
    examples: list[QAExample]
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    example_index: np.ndarray  # int64 [N]: the example each window comes from
    # int64 [len_i, 2] character (start, end) in the context per token; (-1, -1) outside it.
    offsets: list[np.ndarray]
    start_positions: np.ndarray  # int32 [N] answer start token per window (0: no answer here)
    end_positions: np.ndarray  # int32 [N]
    max_seq_length: int
    pad_id: int
    labels = None  # the batcher's "no class labels": positions travel separately

    def __len__(self) -> int:
        return len(self.input_ids)


# ---------------------------------------------------------------------------- reading examples


def _field(record, key: str, kind: type, where: str):
    if not isinstance(record, dict) or key not in record:
        raise DataError(f"{where}: missing {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def check_answer(context: str, answer: Answer, where: str) -> None:
    """An answer must be the context's text at its offset (else its span would be wrong)."""
    found = context[answer.start : answer.start + len(answer.text)]
    if answer.start < 0 or found != answer.text:
        raise DataError(
            f"{where}: answer {answer.text!r} is not at its answer_start={answer.start} "
            f"(the context has {found!r} there)"
        )
    if not answer.text.strip():
        raise DataError(f"{where}: an answer's text is empty")


def read_squad_file(name: str | Path, *, require_answers: bool = True) -> list[QAExample]:
    """Every question of a SQuAD v1.1/v2.0 JSON file (``data[].paragraphs[].qas[]``).

    Bad records are one :class:`DataError` naming the file and the question id: a missing
    ``context``/``question``/``id``, an answer whose text is not at its ``answer_start``, an
    answerable question without answers (when ``require_answers``).
    """
    path = local_path(str(name))
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    examples = []
    for a, article in enumerate(_field(raw, "data", list, f"{path}")):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{path}: data[{a}]")):
            qas = _field(paragraph, "qas", list, f"{path}: data[{a}].paragraphs[{p}]")
            for q, qa in enumerate(qas):
                qid = qa.get("id", f"data[{a}].paragraphs[{p}].qas[{q}]") if isinstance(qa, dict) \
                    else f"data[{a}].paragraphs[{p}].qas[{q}]"
                where = f"{path}: question id {qid}"
                context = _field(paragraph, "context", str, where)
                question = _field(qa, "question", str, where)
                _field(qa, "id", str, where)
                impossible = bool(qa.get("is_impossible", False))
                answers = []
                for answer in [] if impossible else qa.get("answers", []):
                    text = _field(answer, "text", str, where)
                    start = _field(answer, "answer_start", int, where)
                    answers.append(Answer(text, start))
                    check_answer(context, answers[-1], where)
                if require_answers and not impossible and not answers:
                    raise DataError(f"{where}: no answers and not is_impossible")
                examples.append(QAExample(qid, question, context, tuple(answers), impossible))
    if not examples:
        raise DataError(f"{path}: no questions (expected data[].paragraphs[].qas[])")
    return examples


def hub_examples(hub: HubDataset, split: str, what: str) -> list[QAExample]:
    """The questions of an HF dataset split in the ``squad``/``squad_v2`` layout (``id``,
    ``question``, ``context``, ``answers: {text: [...], answer_start: [...]}``)."""
    ds = hub.split(split, what)
    examples = []
    for row in ds:
        where = f"{hub.name}[{split}]: question id {row.get('id')}"
        for key in ("id", "question", "context", "answers"):
            if key not in row:
                raise DataError(f"{where}: missing {key!r}")
        answers = tuple(Answer(t, int(s)) for t, s in zip(row["answers"]["text"],
                                                          row["answers"]["answer_start"]))
        for answer in answers:
            check_answer(row["context"], answer, where)
        examples.append(QAExample(str(row["id"]), row["question"], row["context"], answers,
                                  is_impossible=not answers))
    return examples


# ---------------------------------------------------------------------------- windows


def _cut_questions(examples, tokenizer, max_query_length: int, max_seq_length: int, source: str):
    """Questions stripped on the left (HF) and cut to ``max_query_length`` tokens (BERT's
    run_squad); a question longer than ``max_seq_length`` tokens is an error, not cut."""
    questions = [ex.question.lstrip() for ex in examples]
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for ex, question, ids, offsets in zip(examples, questions, encoded["input_ids"],
                                          encoded["offset_mapping"]):
        if not ids:
            raise DataError(f"{source}: question id {ex.id}: the question is empty")
        if len(ids) + 3 > max_seq_length:
            raise DataError(
                f"{source}: question id {ex.id}: the question has {len(ids)} tokens; with [CLS], "
                f"two [SEP] and any context it does not fit in max_seq_length={max_seq_length}"
            )
        out.append(question[: offsets[max_query_length - 1][1]] if len(ids) > max_query_length
                   else question)
    return out


def featurize(
    examples: Sequence[QAExample],
    tokenizer,
    *,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    source: str,
    name: str = "train",
) -> QAFeatures:
    """Tokenize ``examples`` into overlapping windows with their answer token spans.

    The start/end position of a window is that of the first answer (SQuAD's training files have
    one) when the window's context tokens hold all of it, else 0 ([CLS]), as HF's ``run_qa``.
    """
    if not tokenizer.is_fast:
        raise DataError("question answering needs a fast tokenizer (offset mappings)")
    questions = _cut_questions(examples, tokenizer, max_query_length, max_seq_length, source)
    if tokenizer.padding_side != "right":
        raise DataError("question answering expects a tokenizer that pads on the right")
    input_ids, token_type_ids, offsets, example_index, starts, ends = [], [], [], [], [], []
    chunk = 1000
    for begin in range(0, len(examples), chunk):
        batch = examples[begin : begin + chunk]
        encoded = tokenizer(
            questions[begin : begin + chunk], [ex.context for ex in batch],
            truncation="only_second", max_length=max_seq_length, stride=doc_stride,
            return_overflowing_tokens=True, return_offsets_mapping=True,
            return_token_type_ids=True, padding=False,
        )
        for w, ids in enumerate(encoded["input_ids"]):
            local = encoded["overflow_to_sample_mapping"][w]
            ex = batch[local]
            sequence_ids = encoded.sequence_ids(w)
            spans = np.array(
                [o if s == 1 else (-1, -1) for o, s in zip(encoded["offset_mapping"][w], sequence_ids)],
                np.int64,
            ).reshape(-1, 2)
            start, end = 0, 0
            if ex.answers and not ex.is_impossible:
                start, end = _answer_tokens(spans, ex.answers[0])
            input_ids.append(np.asarray(ids, np.int32))
            token_type_ids.append(np.asarray(encoded["token_type_ids"][w], np.int32))
            offsets.append(spans)
            example_index.append(begin + local)
            starts.append(start)
            ends.append(end)
    return QAFeatures(
        name=name, source=source, examples=list(examples), input_ids=input_ids,
        token_type_ids=token_type_ids, example_index=np.asarray(example_index, np.int64),
        offsets=offsets, start_positions=np.asarray(starts, np.int32),
        end_positions=np.asarray(ends, np.int32), max_seq_length=max_seq_length,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


def _answer_tokens(spans: np.ndarray, answer: Answer) -> tuple[int, int]:
    """(start, end) token indices of ``answer`` in a window whose context tokens have character
    ``spans [L, 2]`` ((-1, -1) elsewhere); (0, 0) when the window does not hold all of it."""
    first_char, last_char = answer.start, answer.start + len(answer.text)
    context = np.flatnonzero(spans[:, 0] >= 0)
    if not len(context) or spans[context[0], 0] > first_char or spans[context[-1], 1] < last_char:
        return 0, 0
    # The token holding the first character, and the one holding the last (HF's walk).
    start = context[np.searchsorted(spans[context, 0], first_char, side="right") - 1]
    end = context[np.searchsorted(spans[context, 1], last_char, side="left")]
    return int(start), int(end)


# ---------------------------------------------------------------------------- batches


class QABatcher(ClassificationBatcher):
    """Bucketed batches of :class:`QAFeatures` (see :class:`ClassificationBatcher`: same plan,
    buckets and padded last evaluation batch), with int32 ``start_positions`` and
    ``end_positions`` [b]. ``fixed_eval_length`` pads every evaluation batch to the longest window
    of the split, so the per-token logits of all batches concatenate."""

    def __init__(self, features: QAFeatures, *, fixed_eval_length: bool = True, **kwargs):
        super().__init__(features, **kwargs)
        self.fixed_eval_length = fixed_eval_length

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, index = divmod(step, self.steps_per_epoch)
        return self._assemble(self._epoch_plan(epoch)[index])

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        buckets = self.buckets
        if self.fixed_eval_length and len(self.split):
            self.buckets = [int(self.lengths.max())]
        try:
            yield from super().eval_batches()
        finally:
            self.buckets = buckets

    def _assemble(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        batch = super()._assemble(rows_B)
        rows_b = rows_B[self.local]
        real = rows_b >= 0
        for key, values in (("start_positions", self.split.start_positions),
                            ("end_positions", self.split.end_positions)):
            batch[key] = np.where(real, values[np.maximum(rows_b, 0)], 0).astype(np.int32)
        return batch


# ---------------------------------------------------------------------------- answers from logits


@dataclasses.dataclass(frozen=True)
class Prediction:
    id: str
    text: str  # "" for no answer (v2) or no valid span
    start: int  # character offsets of the answer in the context (-1, -1 for no answer)
    end: int
    score: float  # start logit + end logit of the chosen span (of [CLS] for no answer)
    null_score_diff: float | None = None  # v2: [CLS] score - best span score


def postprocess(
    features: QAFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> list[Prediction]:
    """One answer per example from per-window logits ``[N, L]`` (L >= every window's length).

    As HF's ``postprocess_qa_predictions``: in each window the ``n_best`` highest start and end
    logits (among the window's own tokens; padding is never a candidate) make the candidate
    spans, kept when both ends are context tokens, ``start <= end`` and the span has at most
    ``max_answer_length`` tokens; a span scores ``start_logit + end_logit``, and the best one over
    all windows of the example wins. With ``version_2_with_negative``, the null score is the
    lowest [CLS] score ``start[0] + end[0]`` over the windows, and the answer is "" when
    ``null - best span > null_score_diff_threshold``. Without any valid span the answer is "".
    """
    by_example: dict[int, list[int]] = {}
    for window, example in enumerate(features.example_index):
        by_example.setdefault(int(example), []).append(window)
    predictions = []
    for e, example in enumerate(features.examples):
        best = None  # (score, start_char, end_char)
        null = None
        for window in by_example.get(e, []):
            spans = features.offsets[window]
            length = len(spans)
            start_W, end_W = start_logits[window, :length], end_logits[window, :length]
            window_null = float(start_W[0] + end_W[0])
            null = window_null if null is None else min(null, window_null)
            starts = np.argsort(-start_W, kind="stable")[:n_best]  # highest first
            ends = np.argsort(-end_W, kind="stable")[:n_best]
            in_context = spans[:, 0] >= 0
            valid_SxE = (in_context[starts][:, None] & in_context[ends][None, :]
                         & (ends[None, :] >= starts[:, None])
                         & (ends[None, :] - starts[:, None] + 1 <= max_answer_length))
            if valid_SxE.any():
                score_SxE = np.where(valid_SxE, start_W[starts][:, None] + end_W[ends][None, :],
                                     -np.inf)
                i, j = np.unravel_index(score_SxE.argmax(), score_SxE.shape)  # first best
                score = float(score_SxE[i, j])
                if best is None or score > best[0]:
                    best = (score, int(spans[starts[i], 0]), int(spans[ends[j], 1]))
        if version_2_with_negative:
            diff = None if null is None else null - (best[0] if best is not None else -np.inf)
            if best is None or diff > null_score_diff_threshold:
                predictions.append(Prediction(example.id, "", -1, -1,
                                              null if null is not None else 0.0, diff))
                continue
            text = example.context[best[1] : best[2]]
            predictions.append(Prediction(example.id, text, best[1], best[2], best[0], diff))
        elif best is None:
            predictions.append(Prediction(example.id, "", -1, -1, 0.0))
        else:
            predictions.append(Prediction(example.id, example.context[best[1] : best[2]],
                                          best[1], best[2], best[0]))
    return predictions
