"""Extractive question answering (SQuAD v1.1/v2.0): the fine-tuning recipe for ``task:
question_answering``, and the file-level predict and evaluate behind ``jaxtl predict`` /
``jaxtl evaluate`` for a ``*ForQuestionAnswering`` folder.

    jaxtl finetune --config configs/squad_v1_bert_base_uncased.yaml --workdir runs/squad
    jaxtl evaluate --model runs/squad/best --file dev-v1.1.json
    jaxtl predict  --model runs/squad/best --file questions.json --output answers.jsonl

Evaluation turns the logits of every window into one answer per question
(:func:`jaxtl.data.question_answering.postprocess`) and scores them with the official SQuAD
EM / F1 (:func:`jaxtl.metrics.squad_metrics`); the best model is the one with the highest ``f1``.
Each evaluation also reports ``baseline_exact`` / ``baseline_f1``: the scores of answering with
the context sentence that shares the most words with the question.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np

from jaxtl import heads, hf
from jaxtl.config import Config, QuestionAnsweringDataConfig
from jaxtl.errors import DataError
from jaxtl.tasks import common
from jaxtl.train import EvalSet, Setup

log = logging.getLogger(__name__)

HEAD = "question_answering"
# HF's *ForQuestionAnswering has num_labels = 2 outputs (start, end) per token.
QA_LABELS = ("LABEL_0", "LABEL_1")


def data_config(cfg: Config) -> QuestionAnsweringDataConfig:
    """The run's QA data settings; the defaults when ``cfg`` is another task's config."""
    if isinstance(cfg.data, QuestionAnsweringDataConfig):
        return cfg.data
    return QuestionAnsweringDataConfig()


def _features(examples, tokenizer, d: QuestionAnsweringDataConfig, source: str, name: str):
    from jaxtl.data import question_answering as qa_data

    return qa_data.featurize(
        examples, tokenizer, max_seq_length=d.max_seq_length, doc_stride=d.doc_stride,
        max_query_length=d.max_query_length, source=source, name=name,
    )


def _check_length(d: QuestionAnsweringDataConfig, max_positions: int) -> None:
    if d.max_seq_length > max_positions:
        raise DataError(f"data.max_seq_length={d.max_seq_length} is more than the model's "
                        f"max_position_embeddings={max_positions}")


def _load_examples(d: QuestionAnsweringDataConfig):
    """``(train_examples, train_source, validation_examples | None, validation_source)``."""
    from jaxtl.data import question_answering as qa_data

    if d.train_file is not None:
        train = qa_data.read_squad_file(d.train_file)
        validation = qa_data.read_squad_file(d.validation_file) if d.validation_file else None
        return train, d.train_file, validation, d.validation_file
    from jaxtl.data.sources import HubDataset

    hub = HubDataset(d.dataset, d.dataset_config,
                     local_hint="data.train_file / data.validation_file (SQuAD JSON)")
    train = qa_data.hub_examples(hub, d.train_split, "train_split")
    validation = None
    if hub.has(d.validation_split):
        validation = qa_data.hub_examples(hub, d.validation_split, "validation_split")
    return train, f"{hub.name}[{d.train_split}]", validation, f"{hub.name}[{d.validation_split}]"


def _check_answers(examples, d: QuestionAnsweringDataConfig, source: str) -> None:
    if d.version_2_with_negative:
        return
    for ex in examples:
        if ex.is_impossible or not ex.answers:
            raise DataError(f"{source}: question id {ex.id} has no answer; set "
                            "data.version_2_with_negative: true for SQuAD v2-style data")


def predictions_from_logits(d: QuestionAnsweringDataConfig, features, start_logits, end_logits):
    from jaxtl.data import question_answering as qa_data

    return qa_data.postprocess(
        features, start_logits, end_logits, n_best=d.n_best,
        max_answer_length=d.max_answer_length,
        version_2_with_negative=d.version_2_with_negative,
        null_score_diff_threshold=d.null_score_diff_threshold,
    )


def score(features, predictions) -> dict[str, float]:
    """Official SQuAD EM / F1 of one prediction per example of ``features``."""
    from jaxtl import metrics

    golds = [[] if ex.is_impossible else [a.text for a in ex.answers] for ex in features.examples]
    return metrics.squad_metrics(golds, [p.text for p in predictions])


def baseline_metrics(features) -> dict[str, float]:
    """SQuAD EM / F1 of answering each question with the context sentence that shares the most
    words with it, as ``baseline_exact`` / ``baseline_f1``: the floor a model is read against."""
    from jaxtl import metrics

    golds = [[] if ex.is_impossible else [a.text for a in ex.answers] for ex in features.examples]
    answers = [metrics.overlap_sentence_baseline(ex.question, ex.context) for ex in features.examples]
    result = metrics.squad_metrics(golds, answers)
    return {f"baseline_{name}": result[name] for name in ("exact", "f1")}


def setup(cfg: Config) -> Setup:
    from jaxtl.data.question_answering import QABatcher

    d, t = cfg.data, cfg.train
    folder, tokenizer_folder, tokenizer, family, base = common.checkpoint_start(cfg)
    _check_length(d, base.max_position_embeddings)
    head_spec = heads.get(HEAD)
    train_examples, train_source, validation_examples, validation_source = _load_examples(d)
    _check_answers(train_examples, d, train_source)
    train = _features(train_examples, tokenizer, d, train_source, "train")
    config = common.model_config(cfg, base, labels=QA_LABELS)
    model = family.build(config, HEAD)
    pretrained = hf.pretrained_weights(folder, model)
    micro = t.batch_size // cfg.optim.grad_accum_steps
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    batching = dict(bucket_sizes=d.bucket_sizes, seed=t.seed,
                    process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = QABatcher(train, batch_size=micro, **batching)

    eval_sets = []
    if validation_examples:
        _check_answers(validation_examples, d, validation_source)
        features = _features(validation_examples, tokenizer, d, validation_source, "validation")
        batches = QABatcher(features, batch_size=eval_batch, **batching)
        baseline = baseline_metrics(features)
        log.info("validation baseline (context sentence with the most question words): %s",
                 ", ".join(f"{k}={v:.2f}" for k, v in baseline.items()))

        def finish(outputs, index):
            keep = index >= 0
            start = np.zeros((len(features), outputs["start_logits"].shape[1]), np.float32)
            end = np.zeros_like(start)
            start[index[keep]] = outputs["start_logits"][keep]
            end[index[keep]] = outputs["end_logits"][keep]
            return {**score(features, predictions_from_logits(d, features, start, end)), **baseline}

        eval_sets.append(EvalSet(
            name="validation", batches=batches.eval_batches, num_batches=batches.num_eval_batches,
            finish=finish, output_keys=head_spec.output_keys,
        ))
    return Setup(
        model=model, task=head_spec.task(config), export=common.exporter(model, tokenizer),
        pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=lambda b: int(b["attention_mask"].sum()),
        eval_sets=eval_sets,
        best_metric=head_spec.best_metric(config),
        meta=common.meta(family, HEAD, config, tokenizer_folder, labels=list(QA_LABELS),
                         qa=dataclasses.asdict(d)),
    )


# ---------------------------------------------------------------------------- inference on a file


def _predict(cfg, model, params, tokenizer, path, batch_size: int, require_answers: bool):
    """``(features, predictions)`` for every question of the SQuAD JSON file ``path``."""
    from jaxtl.data import question_answering as qa_data

    d = data_config(cfg)
    _check_length(d, model.config.max_position_embeddings)
    examples = qa_data.read_squad_file(path, require_answers=require_answers)
    if require_answers:
        _check_answers(examples, d, str(path))
    features = _features(examples, tokenizer, d, str(path), "predict")

    @jax.jit
    def forward(batch):
        out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                          batch["token_type_ids"])
        return out["start_logits"], out["end_logits"]

    batches = qa_data.QABatcher(features, batch_size=batch_size, bucket_sizes=d.bucket_sizes)
    length = int(batches.lengths.max())
    start = np.zeros((len(features), length), np.float32)
    end = np.zeros_like(start)
    for batch in batches.eval_batches():
        index = batch.pop("index")
        keep = index >= 0
        s, e = forward({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        start[index[keep]] = np.asarray(s)[keep]
        end[index[keep]] = np.asarray(e)[keep]
    return features, predictions_from_logits(d, features, start, end)


def evaluate_file(cfg, model, params, tokenizer, path, batch_size: int) -> dict:
    """Official SQuAD EM / F1 on a SQuAD JSON file with answers (``jaxtl evaluate``)."""
    features, predictions = _predict(cfg, model, params, tokenizer, path, batch_size, True)
    result = score(features, predictions)
    result["examples"] = len(predictions)
    return result


def predict_file(cfg, model, params, tokenizer, path, batch_size: int) -> list[dict]:
    """One row per question of a SQuAD JSON file (answers not needed): ``id``, ``answer`` (text;
    "" for no answer), ``answer_start`` / ``answer_end`` (character offsets in the context, -1 for
    no answer), ``score`` (start + end logit of the answer)."""
    _, predictions = _predict(cfg, model, params, tokenizer, Path(path), batch_size, False)
    rows = []
    for p in predictions:
        row = {"id": p.id, "answer": p.text, "answer_start": p.start, "answer_end": p.end,
               "score": p.score}
        if p.null_score_diff is not None:
            row["null_score_diff"] = p.null_score_diff
        rows.append(row)
    return rows
