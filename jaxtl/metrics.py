"""Evaluation metrics over a whole split, computed by scikit-learn and SciPy (not re-derived here).

Inputs are host numpy arrays gathered after evaluation, with padding rows already removed
(``example_weight == 0`` rows of :meth:`jaxtl.data.batching.Batcher.eval_batches`).
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

# scikit-learn and SciPy are imported where a split is scored, not with this module: the
# token-classification recipe imports this module at start-up, where the two took 2 s that no
# train step needs (importing the recipe: 4.7 -> 2.6 s, medians of 5 on the benchmark host).


def _flat(name: str, values) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty: no examples to score")
    return array


def classification_metrics(
    label_ids, pred_ids, *, num_labels: int | None = None
) -> dict[str, float]:
    """Accuracy, macro-F1 and Matthews correlation (MCC) of predicted label ids.

    Args:
      label_ids: int [N] true label ids.
      pred_ids: int [N] predicted label ids (argmax of the logits).
      num_labels: size of the label set. With 2 labels (or, when None, when every id is 0 or 1)
        the binary ``f1`` of label 1 is added, the usual GLUE metric for MRPC/QQP.

    Degenerate inputs give numbers, not NaN: MCC is 0.0 when either side is constant
    (scikit-learn's convention), and an F1 whose class is never predicted nor present counts 0.
    Macro-F1 averages over ``range(num_labels)`` when given (absent classes score 0), else over
    the ids that occur.
    """
    from sklearn import metrics as skm

    y_true = _flat("label_ids", label_ids).astype(np.int64)
    y_pred = _flat("pred_ids", pred_ids).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label_ids has {y_true.size} entries but pred_ids has {y_pred.size}")
    classes = list(range(num_labels)) if num_labels is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on constant inputs; handled above
        result = {
            "accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "macro_f1": float(
                skm.f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
            ),
            "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
        }
        binary = (
            num_labels == 2
            if num_labels is not None
            else bool(np.all((y_true <= 1) & (y_true >= 0) & (y_pred <= 1) & (y_pred >= 0)))
        )
        if binary:
            result["f1"] = float(
                skm.f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0)
            )
    return {key: 0.0 if math.isnan(value) else value for key, value in result.items()}


def regression_metrics(targets, preds) -> dict[str, float]:
    """Pearson and Spearman correlation and mean squared error of predicted scores.

    Args:
      targets: float [N] true values.
      preds: float [N] predicted values.

    A correlation is undefined when either side is constant (e.g. a model that has collapsed to
    one output, or a single example); it is reported as 0.0 — no linear or rank relation —
    rather than NaN, so "best checkpoint" comparisons and logs stay numeric.
    """
    from scipy import stats
    from sklearn import metrics as skm

    y_true = _flat("targets", targets).astype(np.float64)
    y_pred = _flat("preds", preds).astype(np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"targets has {y_true.size} entries but preds has {y_pred.size}")
    if not np.all(np.isfinite(y_pred)):
        raise ValueError("preds holds NaN or infinite values")

    def correlation(fn) -> float:
        if y_true.size < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(fn(y_true, y_pred)[0])
        return 0.0 if math.isnan(value) else value

    return {
        "pearson": correlation(stats.pearsonr),
        "spearman": correlation(stats.spearmanr),
        "mse": float(skm.mean_squared_error(y_true, y_pred)),
    }


# ---------------------------------------------------------------------------- multi-label


def multi_label_metrics(label_sets, predicted_sets) -> dict[str, float]:
    """Micro- and macro-averaged F1, micro precision/recall and subset accuracy (exact match of
    the whole label set) of multi-hot predictions, by scikit-learn.

    Args:
      label_sets: 0/1 [N, C] true labels (one column per label, in id order).
      predicted_sets: 0/1 [N, C] predicted labels (probability above the threshold).

    Macro-F1 averages over all C labels; a label neither present nor predicted scores 0
    (``zero_division=0``, as for single-label macro-F1), like any other undefined F1.
    """
    from sklearn import metrics as skm

    y_true = np.asarray(label_sets).astype(np.int64)
    y_pred = np.asarray(predicted_sets).astype(np.int64)
    if y_true.ndim != 2 or y_true.size == 0:
        raise ValueError(f"label_sets must be a non-empty [N, C] matrix, got shape {y_true.shape}")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label_sets has shape {y_true.shape} but predicted_sets {y_pred.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about labels never predicted
        return {
            "micro_f1": float(skm.f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "micro_precision": float(
                skm.precision_score(y_true, y_pred, average="micro", zero_division=0)
            ),
            "micro_recall": float(skm.recall_score(y_true, y_pred, average="micro", zero_division=0)),
            "subset_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        }


# ---------------------------------------------------------------------------- token classification

# Tag schemes seqeval reads (strict mode): a tag is "<prefix>-<type>" or "O".
TAG_SCHEMES = ("IOB2", "IOBES")
_ENTITY_PREFIXES = {"IOB2": ("B", "I"), "IOBES": ("B", "I", "E", "S")}


def has_entity_tags(labels) -> bool:
    """True when the tag set is an entity scheme (``B-PER``, ``I-LOC``, ``O``, ...), so entity
    F1 means something; plain tag sets (part-of-speech: ``NOUN``, ``VERB``) score by accuracy."""
    prefixed = [label for label in labels if re.fullmatch(r"[BIES]-.+", str(label))]
    return bool(prefixed) and all(label == "O" or label in prefixed for label in map(str, labels))


def token_classification_metrics(gold_tags, predicted_tags, scheme: str = "IOB2") -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, micro-averaged over entity types) and
    token accuracy, over sentences of tags (lists of tag strings, one per labelled word).

    ``scheme``: IOB2 (default) or IOBES. Entities are read the way seqeval's default (lenient,
    conlleval-compatible) mode reads them, as HF's ``run_ner`` reports; tag sets that are not an
    entity scheme get only ``token_accuracy``.
    """
    from seqeval import metrics as seq

    if scheme not in TAG_SCHEMES:
        raise ValueError(f"tag scheme {scheme!r} is unknown; use one of {', '.join(TAG_SCHEMES)}")
    if len(gold_tags) != len(predicted_tags):
        raise ValueError(f"{len(gold_tags)} gold sentences but {len(predicted_tags)} predicted")
    gold_flat = [tag for sentence in gold_tags for tag in sentence]
    predicted_flat = [tag for sentence in predicted_tags for tag in sentence]
    if len(gold_flat) != len(predicted_flat):
        raise ValueError("gold and predicted sentences differ in length")
    if not gold_flat:
        raise ValueError("no labelled tokens to score")
    result = {"token_accuracy": float(np.mean([g == p for g, p in zip(gold_flat, predicted_flat)]))}
    if not has_entity_tags(set(gold_flat) | set(predicted_flat)):
        return result
    kwargs = {}
    if scheme == "IOBES":
        from seqeval.scheme import IOBES

        kwargs = dict(mode="strict", scheme=IOBES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns when a class is never predicted
        result["entity_precision"] = float(seq.precision_score(gold_tags, predicted_tags, zero_division=0, **kwargs))
        result["entity_recall"] = float(seq.recall_score(gold_tags, predicted_tags, zero_division=0, **kwargs))
        result["entity_f1"] = float(seq.f1_score(gold_tags, predicted_tags, zero_division=0, **kwargs))
    return result


# ---------------------------------------------------------------------------- SQuAD EM / F1
# The official SQuAD v1.1 / v2.0 evaluation scripts' formulas, written out: no package ships them
# offline (HF `evaluate` fetches its "squad" metric from the hub).


def normalize_answer(text: str) -> str:
    """The official normalization: lowercase, drop punctuation, drop the articles a/an/the,
    collapse whitespace."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def squad_f1(gold: str, prediction: str) -> float:
    """Bag-of-tokens F1 of normalized answers; an empty side scores 1 only against empty (v2)."""
    from collections import Counter

    gold_tokens = normalize_answer(gold).split()
    pred_tokens = normalize_answer(prediction).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(golds: list[list[str]], predictions: list[str]) -> dict[str, float]:
    """``exact`` and ``f1`` (in percent, as the official scripts) of one prediction per question
    against its gold answers (max over them), with the v2 splits ``HasAns_*`` / ``NoAns_*`` when
    some question has no answer (its gold is ``[]``; only "" scores there).

    Gold answers that normalize to "" are dropped, and a question left without any is a no-answer
    question (the v2.0 script's rule).
    """
    if len(golds) != len(predictions):
        raise ValueError(f"{len(golds)} gold answer lists but {len(predictions)} predictions")
    if not golds:
        raise ValueError("no questions to score")
    exact, f1, has_answer = [], [], []
    for answers, prediction in zip(golds, predictions):
        answers = [a for a in answers if normalize_answer(a)] or [""]
        has_answer.append(answers != [""])
        exact.append(max(squad_exact(a, prediction) for a in answers))
        f1.append(max(squad_f1(a, prediction) for a in answers))
    exact, f1, has_answer = np.array(exact, float), np.array(f1, float), np.array(has_answer)
    out = {"exact": 100.0 * exact.mean(), "f1": 100.0 * f1.mean(), "total": float(len(golds))}
    if not has_answer.all():
        for name, keep in (("HasAns", has_answer), ("NoAns", ~has_answer)):
            out[f"{name}_total"] = float(keep.sum())
            if keep.any():
                out[f"{name}_exact"] = 100.0 * exact[keep].mean()
                out[f"{name}_f1"] = 100.0 * f1[keep].mean()
    return out


# ---------------------------------------------------------------------------- simple baselines
# Floors to read a fine-tuned model's scores against, on the same split.


def most_frequent_tag_baseline(train_words, train_tags, words) -> list[list[str]]:
    """Tag each word of ``words`` (sentences of words) with its most frequent training tag; a
    word never seen in training gets the most frequent tag overall. Ties go to the tag seen first.
    """
    from collections import Counter, defaultdict

    per_word: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for sentence_words, sentence_tags in zip(train_words, train_tags):
        for word, tag in zip(sentence_words, sentence_tags):
            per_word[word][tag] += 1
            overall[tag] += 1
    if not overall:
        raise ValueError("no training words to learn the most frequent tags from")
    default = overall.most_common(1)[0][0]
    best = {word: counts.most_common(1)[0][0] for word, counts in per_word.items()}
    return [[best.get(word, default) for word in sentence] for sentence in words]


_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


def context_sentences(context: str) -> list[str]:
    """``context`` cut after each ``.``/``!``/``?`` (and closing quotes) that whitespace follows."""
    return [s.strip() for s in _SENTENCE_END.split(context) if s.strip()]


def overlap_sentence_baseline(question: str, context: str) -> str:
    """The sentence of ``context`` sharing the most distinct normalized words with ``question``
    (SQuAD normalization: lowercase, no punctuation or articles); the first one on a tie."""
    asked = set(normalize_answer(question).split())
    sentences = context_sentences(context) or [context]
    overlaps = [len(asked & set(normalize_answer(s).split())) for s in sentences]
    return sentences[int(np.argmax(overlaps))]
