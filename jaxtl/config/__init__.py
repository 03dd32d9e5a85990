"""Typed, frozen run configuration: YAML files in ``configs/`` plus dotted ``--set`` overrides.

A config has five sections — ``model``, ``data``, ``optim``, ``mesh``, ``train`` — and a ``task``
(``finetune`` or ``pretrain``), which picks the data section's type. Every field is documented
where it is defined. Values are checked against the field annotations at any depth (list items,
mapping values, ``model.overrides`` against the architecture's own fields), then for range and
for use: a value the task would never read is refused rather than silently ignored. Every
problem raises one one-line :class:`ConfigError` naming the dotted key (``data.bucket_sizes[1]``,
``mesh.rules.heads``) or the file. Nothing is ever ``eval``-ed.

    cfg = jaxtl.config.load("configs/demo_finetune.yaml", ["optim.lr=3e-5", "train.epochs=2"])

The package: ``schema`` (the sections, each field commented once), ``parse`` (YAML, overrides,
types), ``checks`` (ranges and combinations), ``messages``.
"""

from jaxtl.config.checks import validate  # noqa: F401
from jaxtl.config.parse import apply_overrides, from_dict, load  # noqa: F401
from jaxtl.config.schema import (  # noqa: F401
    CHOICES, DATA_CLASSES, JAXTL_ONLY_FIELDS, SECTIONS, SEED_LIMIT, TASKS, Architecture, Config,
    FinetuneDataConfig, MeshConfig, ModelConfig, MultipleChoiceDataConfig, OptimConfig, PretrainDataConfig,
    QuestionAnsweringDataConfig, TokenClassificationDataConfig, TrainConfig, architecture,
    architecture_fields,
)
from jaxtl.errors import ConfigError  # noqa: F401
