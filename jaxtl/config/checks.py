"""Validation of a parsed config: ranges, choices, and combinations (a value the task does not
use is an error)."""

from __future__ import annotations

import re
from typing import Any


from jaxtl.errors import ConfigError
from jaxtl.config.messages import _one_line, _join, _show
from jaxtl.config.schema import Config, FinetuneDataConfig, MeshConfig, ModelConfig, MultipleChoiceDataConfig, OptimConfig, PretrainDataConfig, QuestionAnsweringDataConfig, SEED_LIMIT, TokenClassificationDataConfig, TrainConfig, architecture


# --------------------------------------------------------------------------------------------
# Validation: ranges, choices, combinations


def _positive(key: str, value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{key}={_show(value)} must be positive")


def _at_least(key: str, value: Any, low: int = 0) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key}={_show(value)} must be >= {low}")


def _within(key: str, value: Any, low: float, high: float, *, low_open: bool = False,
            high_open: bool = True) -> None:
    """``value`` in the interval from ``low`` to ``high`` (open at either end as asked)."""
    if value is None:
        return
    above = low < value if low_open else low <= value
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={_show(value)} must be in {interval}")


def _seed(key: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{key}={_show(value)} must be in [0, 2**32)")


def _default(cls: type, name: str) -> Any:
    return cls.__dataclass_fields__[name].default


def _unused_unless(prefix: str, section: Any, names: tuple[str, ...], condition: str) -> None:
    """Refuse any of ``names`` set away from its default: only ``condition`` reads it, and it does
    not hold, so the setting would silently do nothing."""
    for name in names:
        value = getattr(section, name)
        if value != _default(type(section), name):
            raise ConfigError(f"{prefix}.{name}={_show(value)} is only used {condition}")


def validate(cfg: Config) -> None:
    """Impossible values and values the task would not use, named. Checks that need the model or
    the data happen where those load."""
    _validate_model("pretrain" if cfg.task == "pretrain" else "finetune", cfg.model)
    if cfg.task == "finetune":
        _validate_finetune_data(cfg.data)
    elif cfg.task == "token_classification":
        _validate_token_classification_data(cfg.data)
    elif cfg.task == "question_answering":
        _validate_question_answering_data(cfg.data)
    elif cfg.task == "multiple_choice":
        _validate_multiple_choice_data(cfg.data)
    else:
        _validate_pretrain_data(cfg.data)
    _validate_optim(cfg.optim)
    _validate_mesh(cfg.mesh)
    _validate_train(cfg.train, cfg.optim)


def _validate_model(task: str, m: ModelConfig) -> None:
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        _within(f"model.{name}", getattr(m, name), 0, 1)
    from_scratch = "by `task: pretrain` from scratch (without model.pretrained)"
    if task != "pretrain":
        if m.pretrained is None:
            raise ConfigError("fine-tuning needs model.pretrained (an HF folder, hub id or asset:)")
        _unused_unless("model", m, ("size", "family"), from_scratch)
        if m.overrides:
            names = ", ".join(_join("", name) for name in m.overrides)
            raise ConfigError(
                f"model.overrides ({names}) is only used by `task: pretrain`; fine-tuning takes "
                "the architecture from model.pretrained (dropout: model.hidden_dropout_prob, ...)"
            )
        return
    if m.pretrained is not None:
        if m.size is not None:
            raise ConfigError(
                f"model.pretrained and model.size={_show(m.size)} contradict each other: continue "
                "pretraining model.pretrained (its own size), or pretrain a model.size from scratch"
            )
        _unused_unless("model", m, ("family",), from_scratch)
        return
    if m.size is None:
        raise ConfigError("set model.pretrained (continue from a checkpoint) or model.size")
    if m.tokenizer is None:
        raise ConfigError("a from-scratch model needs model.tokenizer (a folder or hub id)")
    arch = architecture(m.family)
    if m.size not in arch.sizes:
        raise ConfigError(
            f"model.size={_show(m.size)}: use one of {', '.join(arch.sizes)} "
            f"(sizes of a {m.family} model)"
        )
    if m.overrides:  # combinations the architecture refuses (hidden_size vs heads, activation)
        try:
            arch.preset(m.size, **m.overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.overrides: {_one_line(e)}") from None


def _validate_finetune_data(d: FinetuneDataConfig) -> None:
    _positive("data.max_seq_length", d.max_seq_length)
    _within("data.validation_fraction", d.validation_fraction, 0, 1)
    _within("data.test_fraction", d.test_fraction, 0, 1)
    if d.validation_fraction + d.test_fraction >= 1.0:
        raise ConfigError("data.validation_fraction + data.test_fraction must be below 1")
    _seed("data.split_seed", d.split_seed)
    if d.dataset is None and d.train_file is None:
        raise ConfigError("set data.train_file (a CSV/TSV/JSON/JSONL file) or data.dataset")
    if d.dataset is not None and d.train_file is not None:
        raise ConfigError("set either data.train_file or data.dataset, not both")
    if d.dataset is None:
        hub_only = ("dataset_config", "train_split", "validation_split", "test_split")
        _unused_unless("data", d, hub_only, "with data.dataset")
    for split in ("validation", "test"):
        fraction = getattr(d, f"{split}_fraction")
        if getattr(d, f"{split}_file") is not None and fraction > 0:
            raise ConfigError(
                f"data.{split}_fraction={_show(fraction)} is not used when data.{split}_file is set"
            )
    if d.multi_label:
        if d.regression:
            raise ConfigError("data.multi_label: true and data.regression: true contradict each "
                              "other: a set of labels per row, or one number")
        if not d.label_separator:
            raise ConfigError("data.label_separator='' must be a non-empty string (e.g. ',' or '|')")
        _within("data.threshold", d.threshold, 0, 1, low_open=True)
        if d.packing:
            raise ConfigError("data.packing: true is not supported with data.multi_label: true "
                              "(packed rows carry one label per example); set data.packing: false")
    else:
        _unused_unless("data", d, ("label_separator", "threshold"), "with data.multi_label: true")
    if d.labels is not None:
        if d.regression:
            raise ConfigError("data.labels is not used with data.regression: true (one output)")
        names = [str(label).strip() for label in d.labels]
        if len(names) < 2:
            raise ConfigError(
                f"data.labels={_show(d.labels)} needs at least 2 names "
                "(one numeric output is data.regression: true)"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"data.labels={_show(d.labels)} must be distinct")
    for i, size in enumerate(d.bucket_sizes):
        _positive(f"data.bucket_sizes[{i}]", size)
    if any(a >= b for a, b in zip(d.bucket_sizes, d.bucket_sizes[1:])):
        raise ConfigError(f"data.bucket_sizes={_show(d.bucket_sizes)} must be increasing")


def _validate_question_answering_data(d: QuestionAnsweringDataConfig) -> None:
    for name in ("max_seq_length", "doc_stride", "max_query_length", "n_best", "max_answer_length"):
        _positive(f"data.{name}", getattr(d, name))
    room = d.max_seq_length - d.max_query_length - 3  # [CLS] question [SEP] context [SEP]
    if d.doc_stride >= room:
        raise ConfigError(
            f"data.doc_stride={d.doc_stride} must be below max_seq_length - max_query_length - 3 "
            f"= {room}: the context part of a window must be longer than the overlap"
        )
    if d.dataset is None and d.train_file is None:
        raise ConfigError("set data.train_file (a SQuAD JSON file) or data.dataset (squad, squad_v2)")
    if d.dataset is not None and d.train_file is not None:
        raise ConfigError("set either data.train_file or data.dataset, not both")
    if d.dataset is None:
        _unused_unless("data", d, ("dataset_config", "train_split", "validation_split"),
                       "with data.dataset")
    if not d.version_2_with_negative and d.null_score_diff_threshold != 0.0:
        raise ConfigError("data.null_score_diff_threshold is only used with "
                          "data.version_2_with_negative: true")
    for i, size in enumerate(d.bucket_sizes):
        _positive(f"data.bucket_sizes[{i}]", size)
    if any(a >= b for a, b in zip(d.bucket_sizes, d.bucket_sizes[1:])):
        raise ConfigError(f"data.bucket_sizes={_show(d.bucket_sizes)} must be increasing")


def _validate_pretrain_data(d: PretrainDataConfig) -> None:
    _positive("data.max_seq_length", d.max_seq_length)
    _within("data.validation_fraction", d.validation_fraction, 0, 1)
    _seed("data.split_seed", d.split_seed)
    _within("data.short_seq_prob", d.short_seq_prob, 0, 1, high_open=False)
    _within("data.mlm_probability", d.mlm_probability, 0, 1, low_open=True)
    _within("data.mask_token_prob", d.mask_token_prob, 0, 1, high_open=False)
    _within("data.random_token_prob", d.random_token_prob, 0, 1, high_open=False)
    if d.mask_token_prob + d.random_token_prob > 1.0:
        raise ConfigError("data.mask_token_prob + data.random_token_prob must be at most 1")
    _positive("data.max_predictions", d.max_predictions)
    if not d.train_files and d.dataset is None:
        raise ConfigError("set data.train_files (text files) or data.dataset")
    if d.train_files and d.dataset is not None:
        raise ConfigError("set either data.train_files or data.dataset, not both")
    if d.dataset is None:
        hub_only = ("dataset_config", "train_split", "text_column")
        _unused_unless("data", d, hub_only, "with data.dataset")
    if d.nsp and d.sop:
        raise ConfigError("data.sop: true needs data.nsp: false (a pair is either a "
                          "next-sentence or a sentence-order pair)")
    if not d.pairs:
        _unused_unless("data", d, ("short_seq_prob",), "with data.nsp: true or data.sop: true")
    if d.validation_files and d.validation_fraction != _default(PretrainDataConfig,
                                                                 "validation_fraction"):
        raise ConfigError(
            f"data.validation_fraction={_show(d.validation_fraction)} is not used when "
            "data.validation_files is set (set one of them)"
        )
    if d.prepared_dir is None:
        _unused_unless("data", d, ("prepare_workers", "prepare_shard_mb", "streaming"),
                       "with data.prepared_dir")
    _positive("data.prepare_workers", d.prepare_workers)
    _positive("data.prepare_shard_mb", d.prepare_shard_mb)
    if d.streaming and d.dataset is None:
        raise ConfigError("data.streaming is only used with data.dataset")


def _validate_optim(o: OptimConfig) -> None:
    _positive("optim.lr", o.lr)
    _within("optim.warmup_ratio", o.warmup_ratio, 0, 1)
    _at_least("optim.warmup_steps", o.warmup_steps)
    _within("optim.end_lr_ratio", o.end_lr_ratio, 0, 1, high_open=False)
    if o.schedule == "constant":
        _unused_unless("optim", o, ("end_lr_ratio",), "with optim.schedule: linear or cosine")
    _at_least("optim.weight_decay", o.weight_decay)
    _within("optim.b1", o.b1, 0, 1)
    _within("optim.b2", o.b2, 0, 1)
    _positive("optim.eps", o.eps)
    _positive("optim.max_grad_norm", o.max_grad_norm)
    _positive("optim.grad_accum_steps", o.grad_accum_steps)
    _within("optim.layerwise_lr_decay", o.layerwise_lr_decay, 0, 1, low_open=True, high_open=False)
    for i, spec in enumerate(o.freeze):
        if spec.startswith("layers:") and not re.fullmatch(r"layers:\d+", spec):
            raise ConfigError(
                f"optim.freeze[{i}]={_show(spec)}: use layers:K, K a number of encoder layers"
            )


def _validate_mesh(m: MeshConfig) -> None:
    for axis in ("data", "fsdp", "tensor"):
        value = getattr(m, axis)
        if value != -1 and value <= 0:
            raise ConfigError(f"mesh.{axis}={value!r} must be positive or -1")
    if [m.data, m.fsdp, m.tensor].count(-1) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    if not m.rules:
        return
    for name, target in m.rules.items():
        if isinstance(target, list) and (not target or len(set(target)) != len(target)):
            raise ConfigError(
                f"{_join('mesh.rules', name)}={_show(target)}: give distinct mesh axes "
                "(null: not sharded)"
            )
    from jaxtl import sharding  # the logical and mesh axis names live there

    sharding.rules_from_config(m)


def _validate_train(t: TrainConfig, o: OptimConfig) -> None:
    _positive("train.batch_size", t.batch_size)
    _positive("train.eval_batch_size", t.eval_batch_size)
    _positive("train.epochs", t.epochs)
    _positive("train.max_steps", t.max_steps)
    _seed("train.seed", t.seed)
    _positive("train.log_every", t.log_every)
    _positive("train.eval_every", t.eval_every)
    _positive("train.save_every", t.save_every)
    _positive("train.save_every_minutes", t.save_every_minutes)
    _positive("train.keep_checkpoints", t.keep_checkpoints)
    if t.batch_size % o.grad_accum_steps:  # grad_accum_steps is checked positive before
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by "
            f"optim.grad_accum_steps={o.grad_accum_steps}"
        )


def _validate_token_classification_data(d: TokenClassificationDataConfig) -> None:
    _positive("data.max_seq_length", d.max_seq_length)
    if d.max_seq_length < 3:
        raise ConfigError(f"data.max_seq_length={d.max_seq_length} leaves no room for a word "
                          "beside [CLS] and [SEP]")
    if d.dataset is None and d.train_file is None:
        raise ConfigError("set data.train_file (CoNLL, JSON or JSONL) or data.dataset")
    if d.dataset is not None and d.train_file is not None:
        raise ConfigError("set either data.train_file or data.dataset, not both")
    if d.dataset is None:
        hub_only = ("dataset_config", "train_split", "validation_split", "test_split")
        _unused_unless("data", d, hub_only, "with data.dataset")
    if d.token_column < 0:
        raise ConfigError(f"data.token_column={d.token_column} must be 0 or more")
    if d.tag_column == d.token_column:
        raise ConfigError(f"data.tag_column={d.tag_column} is also data.token_column")
    if d.tag_scheme not in ("IOB2", "IOBES"):
        raise ConfigError(f"data.tag_scheme={_show(d.tag_scheme)}: use IOB2 or IOBES")
    if d.labels is not None:
        names = [str(label).strip() for label in d.labels]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"data.labels={_show(d.labels)} needs at least 2 distinct tags")
    for i, size in enumerate(d.bucket_sizes):
        _positive(f"data.bucket_sizes[{i}]", size)
    if any(a >= b for a, b in zip(d.bucket_sizes, d.bucket_sizes[1:])):
        raise ConfigError(f"data.bucket_sizes={_show(d.bucket_sizes)} must be increasing")


def _validate_multiple_choice_data(d: MultipleChoiceDataConfig) -> None:
    _positive("data.max_seq_length", d.max_seq_length)
    if d.max_seq_length < 4:
        raise ConfigError(f"data.max_seq_length={d.max_seq_length} leaves no room for a context "
                          "and a choice beside [CLS] [SEP] [SEP]")
    if d.dataset is None and d.train_file is None:
        raise ConfigError("set data.train_file (a CSV/TSV/JSON/JSONL file) or data.dataset")
    if d.dataset is not None and d.train_file is not None:
        raise ConfigError("set either data.train_file or data.dataset, not both")
    if d.dataset is None:
        hub_only = ("dataset_config", "train_split", "validation_split", "test_split")
        _unused_unless("data", d, hub_only, "with data.dataset")
    if (d.choice_columns is None) == (d.choices_column is None):
        raise ConfigError("set one of data.choice_columns (one column per choice, e.g. [ending0, "
                          "ending1, ending2, ending3]) or data.choices_column (a column of lists)")
    if d.choice_columns is not None:
        if len(d.choice_columns) < 2 or len(set(d.choice_columns)) != len(d.choice_columns):
            raise ConfigError(f"data.choice_columns={_show(d.choice_columns)} needs at least 2 "
                              "distinct columns")
    for i, size in enumerate(d.bucket_sizes):
        _positive(f"data.bucket_sizes[{i}]", size)
    if any(a >= b for a, b in zip(d.bucket_sizes, d.bucket_sizes[1:])):
        raise ConfigError(f"data.bucket_sizes={_show(d.bucket_sizes)} must be increasing")
