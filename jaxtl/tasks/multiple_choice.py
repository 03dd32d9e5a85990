"""Multiple choice (SWAG-style): the fine-tuning recipe (``task: multiple_choice``), and the
file-level predict and evaluate behind ``jaxtl predict`` / ``jaxtl evaluate``.

The model scores each of an example's C choices (HF ``*ForMultipleChoice``: ``logits [B, C]``)
and the loss is the cross-entropy of the right one. The best model is picked by ``accuracy``.
The head has no label names (a choice is an index), so the checkpoint's ``labels`` travel
unchanged; a model trained on 4 choices scores any number of them.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxtl import heads, hf
from jaxtl.config import Config, MultipleChoiceDataConfig
from jaxtl.errors import ConfigError, DataError
from jaxtl.tasks import common
from jaxtl.train import EvalSet, Setup

HEAD = "multiple_choice"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _flops_counter(config):
    """Model FLOPs of a step on ``[b, C, L]`` batches: the trunk's on ``b*C`` rows of L (the
    one-output head is negligible)."""
    count = common.flops_counter(config, HEAD)

    def count_rows(local: dict) -> int:
        ids = local["input_ids"]
        return count({"input_ids": ids.reshape(-1, ids.shape[-1])})

    return count_rows


def setup(cfg: Config) -> Setup:
    from jaxtl.data import multiple_choice as mc_data

    d, t = cfg.data, cfg.train
    folder, tokenizer_folder, tokenizer, family, base = common.checkpoint_start(cfg)
    head_spec = heads.get(HEAD)
    data = mc_data.load_multiple_choice_data(d, tokenizer, max_positions=base.max_position_embeddings)
    if data.train is None or len(data.train) == 0:
        raise DataError("no training examples")
    config = common.model_config(cfg, base, problem_type=None)
    model = family.build(config, HEAD)
    pretrained = hf.pretrained_weights(folder, model)
    micro = t.batch_size // cfg.optim.grad_accum_steps
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    batching = dict(bucket_sizes=d.bucket_sizes, seed=t.seed,
                    process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = mc_data.MultipleChoiceBatcher(data.train, batch_size=micro, **batching)

    def make_eval(split) -> EvalSet:
        # accuracy and loss come from the step's metric sums (correct / count)
        batches = mc_data.MultipleChoiceBatcher(split, batch_size=eval_batch, **batching)
        return EvalSet(name=split.name, batches=batches.eval_batches,
                       num_batches=batches.num_eval_batches)

    eval_sets = [make_eval(s) for s in (data.validation, data.test) if s is not None and len(s)]
    return Setup(
        model=model, task=head_spec.task(config), export=common.exporter(model, tokenizer),
        pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=lambda b: int(b["attention_mask"].sum()),
        eval_sets=eval_sets,
        best_metric=head_spec.best_metric(config),
        flops_per_batch=_flops_counter(config),
        meta=common.meta(family, HEAD, config, tokenizer_folder),
    )


# ---------------------------------------------------------------------------- inference on a file


def _data_config(cfg) -> MultipleChoiceDataConfig:
    if not isinstance(cfg.data, MultipleChoiceDataConfig):
        raise ConfigError(f"a multiple-choice model needs the column names of a `task: "
                          f"multiple_choice` config, not of task={cfg.task!r} (--config, or "
                          f"--set data.choice_columns=[...])")
    return cfg.data


def _logits(cfg, model, params, tokenizer, path, batch_size: int):
    """``(split, logits [N, C])`` for every row of the file ``path``."""
    from jaxtl.data import multiple_choice as mc_data

    d = _data_config(cfg)
    split = mc_data.load_prediction_split(path, d, tokenizer,
                                          max_positions=model.config.max_position_embeddings)

    @jax.jit
    def forward(batch):
        return model.apply({"params": params}, *(batch[k] for k in MODEL_INPUTS))["logits"]

    logits = np.zeros((len(split), split.num_choices), np.float32)
    batches = mc_data.MultipleChoiceBatcher(split, batch_size=batch_size, bucket_sizes=d.bucket_sizes)
    for batch in batches.eval_batches():
        index = batch.pop("index")
        out = np.asarray(forward({k: batch[k] for k in MODEL_INPUTS}))
        keep = index >= 0
        logits[index[keep]] = out[keep]
    return split, logits


def evaluate_file(cfg, model, params, tokenizer, path, batch_size: int) -> dict:
    """Accuracy on a labelled file (``jaxtl evaluate``)."""
    split, logits = _logits(cfg, model, params, tokenizer, path, batch_size)
    if split.labels is None:
        raise DataError(f"{path} has no label column {cfg.data.label_column!r} to evaluate against")
    result = heads.get(HEAD).metrics(model.config, split.labels, {"logits": logits})
    result["examples"] = len(split)
    return result


def predict_file(cfg, model, params, tokenizer, path, batch_size: int) -> list[dict]:
    """One output row per input row (``jaxtl predict``): every input column kept as it is, then
    ``predicted_choice`` (0-based) and ``prob_<i>`` for each choice i (softmax over the choices)."""
    from jaxtl.data.tables import read_table

    split, logits = _logits(cfg, model, params, tokenizer, path, batch_size)
    table = read_table(path)
    format_prediction = heads.get(HEAD).format_prediction
    rows = []
    for i in range(len(split)):
        row = {name: values[i] for name, values in table.columns.items()}
        row.update(format_prediction(model.config, {"logits": logits[i]}))
        rows.append(row)
    return rows
