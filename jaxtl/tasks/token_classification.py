"""Token classification (NER, part-of-speech tagging): the fine-tuning recipe (``task:
token_classification``), and the file-level predict and evaluate behind ``jaxtl predict`` /
``jaxtl evaluate``.

Evaluation is per word, on whole sentences: the windows of a long sentence are put back
together, each word takes the tag predicted at its first piece, and entity precision/recall/F1
(seqeval, ``data.tag_scheme``) and token accuracy are computed over the words. The best model is
picked by ``entity_f1``, or ``token_accuracy`` for tag sets without ``B-``/``I-`` prefixes. Each
evaluation also reports ``baseline_*``: the same metrics for tagging every word with its most
frequent training tag.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np

from jaxtl import heads, hf, metrics
from jaxtl.config import Config, TokenClassificationDataConfig
from jaxtl.errors import CheckpointError, DataError
from jaxtl.tasks import common
from jaxtl.train import EvalSet, Setup

log = logging.getLogger(__name__)

HEAD = "token_classification"
CONLL_SUFFIXES = (".conll", ".txt")  # predictions written as "word tag" lines


def sentence_metrics(split, predicted_ids: np.ndarray, labels, scheme: str) -> dict[str, float]:
    """Word-level metrics of a tagged split from per-window ``predicted_ids [windows, >= L]``."""
    from jaxtl.data.token_classification import word_predictions

    predicted = word_predictions(split, predicted_ids, fallback=_fallback(labels))
    predicted_tags = [[labels[i] for i in sentence] for sentence in predicted]
    result = metrics.token_classification_metrics(split.sentences.tags, predicted_tags, scheme)
    result["sentences"] = len(split.sentences)
    return result


def baseline_metrics(train, split, scheme: str) -> dict[str, float]:
    """The scores of tagging each word of ``split`` with its most frequent ``train`` tag, as
    ``baseline_<metric>``: the floor a fine-tuned model is read against."""
    predicted = metrics.most_frequent_tag_baseline(train.sentences.words, train.sentences.tags,
                                                   split.sentences.words)
    result = metrics.token_classification_metrics(split.sentences.tags, predicted, scheme)
    return {f"baseline_{name}": value for name, value in result.items()}


def _fallback(labels) -> int:
    """The tag of a word the tokenizer drops (no pieces): "O" where the tag set has one."""
    return list(labels).index("O") if "O" in labels else 0


def _trained_labels(folder: Path, base) -> tuple[str, ...] | None:
    """The tags of a token classification head already trained (None: the data decides)."""
    try:
        trained = hf.head_of_folder(folder) == HEAD
    except CheckpointError:
        trained = False
    if not trained or common.generic_labels(base.labels):
        return None
    return tuple(base.labels)


def setup(cfg: Config) -> Setup:
    from jaxtl.data import token_classification as tok_data

    d, t = cfg.data, cfg.train
    folder, tokenizer_folder, tokenizer, family, base = common.checkpoint_start(cfg)
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"token classification needs a fast tokenizer (word_ids); "
                        f"{tokenizer_folder} gives {type(tokenizer).__name__}")
    head_spec = heads.get(HEAD)
    data = tok_data.load_token_classification_data(
        d, tokenizer, max_positions=base.max_position_embeddings, labels=_trained_labels(folder, base),
    )
    config = common.model_config(cfg, base, labels=tuple(data.labels), problem_type=None)
    model = family.build(config, HEAD)
    pretrained = hf.pretrained_weights(folder, model)
    micro = t.batch_size // cfg.optim.grad_accum_steps
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    batching = dict(bucket_sizes=d.bucket_sizes, seed=t.seed,
                    process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = tok_data.TokenClassificationBatcher(data.train, batch_size=micro, **batching)

    def make_eval(split) -> EvalSet:
        baseline = baseline_metrics(data.train, split, d.tag_scheme)
        log.info("%s baseline (most frequent training tag per word): %s", split.name,
                 ", ".join(f"{k}={v:.4f}" for k, v in baseline.items()))

        def finish(outputs, index):
            keep = index >= 0
            predicted = np.zeros((len(split), outputs["predicted_ids"].shape[1]), np.int64)
            predicted[index[keep]] = outputs["predicted_ids"][keep]
            return {**sentence_metrics(split, predicted, config.labels, d.tag_scheme), **baseline}

        batches = tok_data.TokenClassificationBatcher(split, batch_size=eval_batch, **batching)
        return EvalSet(name=split.name, batches=batches.eval_batches,
                       num_batches=batches.num_eval_batches, finish=finish,
                       output_keys=("predicted_ids",))

    eval_sets = [make_eval(s) for s in (data.validation, data.test) if s is not None and len(s)]
    best = "entity_f1" if metrics.has_entity_tags(config.labels) else "token_accuracy"
    return Setup(
        model=model, task=head_spec.task(config), export=common.exporter(model, tokenizer),
        pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=lambda b: int(b["attention_mask"].sum()),
        eval_sets=eval_sets,
        best_metric=best,
        meta=common.meta(family, HEAD, config, tokenizer_folder, labels=list(config.labels)),
    )


# ---------------------------------------------------------------------------- inference on a file


def _data_config(cfg) -> TokenClassificationDataConfig:
    """The data section's reading options (defaults when the config is another task's)."""
    return cfg.data if isinstance(cfg.data, TokenClassificationDataConfig) else TokenClassificationDataConfig()


def _predicted_ids(cfg, model, params, tokenizer, path, batch_size: int, require_tags: bool):
    """``(split, predicted tag ids [windows, max_seq_length])`` for the sentences of ``path``."""
    from jaxtl.data import token_classification as tok_data

    d = _data_config(cfg)
    split = tok_data.load_prediction_split(
        path, d, tokenizer, max_positions=model.config.max_position_embeddings,
        labels=tuple(model.config.labels), require_tags=require_tags,
    )

    @jax.jit
    def forward(batch):
        logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                             batch["token_type_ids"])["logits"]
        return logits.argmax(-1)

    predicted = np.zeros((len(split), split.max_seq_length), np.int64)
    batches = tok_data.TokenClassificationBatcher(split, batch_size=batch_size,
                                                  bucket_sizes=d.bucket_sizes)
    for batch in batches.eval_batches():
        index = batch.pop("index")
        out = np.asarray(forward({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}))
        keep = index >= 0
        predicted[index[keep], : out.shape[1]] = out[keep]
    return split, predicted


def evaluate_file(cfg, model, params, tokenizer, path, batch_size: int) -> dict:
    """Entity P/R/F1 and token accuracy per word on a tagged file (``jaxtl evaluate``)."""
    split, predicted = _predicted_ids(cfg, model, params, tokenizer, path, batch_size, require_tags=True)
    result = sentence_metrics(split, predicted, model.config.labels, _data_config(cfg).tag_scheme)
    result["words"] = sum(len(w) for w in split.sentences.words)
    return result


def predict_file(cfg, model, params, tokenizer, path, batch_size: int) -> list[dict]:
    """One row per sentence (``jaxtl predict``): ``tokens`` (its words) and ``tags`` (one
    predicted tag per word); gold tags in the input, if any, are kept as ``gold_tags``."""
    from jaxtl.data.token_classification import word_predictions

    split, predicted = _predicted_ids(cfg, model, params, tokenizer, path, batch_size, require_tags=False)
    labels = model.config.labels
    rows = []
    for s, tag_ids in enumerate(word_predictions(split, predicted, fallback=_fallback(labels))):
        row = {"tokens": split.sentences.words[s], "tags": [labels[i] for i in tag_ids]}
        if split.sentences.tags is not None:
            row["gold_tags"] = split.sentences.tags[s]
        rows.append(row)
    return rows


def write_predictions(rows: list[dict], out: Path) -> None:
    """``.conll``/``.txt``: "word<TAB>tag" lines, a blank line after each sentence; otherwise
    JSON Lines (``.jsonl``, and any other suffix) or one JSON list (``.json``)."""
    if out.suffix.lower() in CONLL_SUFFIXES:
        lines = []
        for row in rows:
            lines.extend(f"{word}\t{tag}" for word, tag in zip(row["tokens"], row["tags"]))
            lines.append("")
        out.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    elif out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
