"""Recipes: for a config, build the model, its pretrained weights, the data, the loss and the
evaluation sets, and hand them to the loop (:func:`jaxtl.train.train_loop`). One module per task:

* :mod:`jaxtl.tasks.classification` — ``task: finetune`` (sequence classification/regression)
* :mod:`jaxtl.tasks.pretraining` — ``task: pretrain``
* :mod:`jaxtl.tasks.token_classification` — ``task: token_classification`` (NER, tagging)
* :mod:`jaxtl.tasks.question_answering` — ``task: question_answering`` (extractive, SQuAD)
* :mod:`jaxtl.tasks.multiple_choice` — ``task: multiple_choice`` (SWAG-style)

    results = jaxtl.tasks.run(jaxtl.config.load("configs/demo_finetune.yaml"), "runs/demo")

A recipe also records with every checkpoint what export needs to rebuild the model without the
training data (family, head, model config, labels, tokenizer folder): see :func:`model_from_meta`.
Adding a task is one module here with a ``setup(cfg) -> Setup``, and one entry in ``RECIPES``.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from jaxtl import hostmem, runlog, train, workdir as workdir_lib
from jaxtl.config import Config
from jaxtl.tasks.common import model_from_meta  # noqa: F401  (export rebuilds models with it)
from jaxtl.train import Setup

# config `task` -> the module whose setup(cfg) builds it
RECIPES = {"finetune": "jaxtl.tasks.classification", "pretrain": "jaxtl.tasks.pretraining",
           "token_classification": "jaxtl.tasks.token_classification",
           "question_answering": "jaxtl.tasks.question_answering",
           "multiple_choice": "jaxtl.tasks.multiple_choice"}
# `jaxtl finetune` runs every task but pretraining
FINETUNE_TASKS = tuple(task for task in RECIPES if task != "pretrain")


def recipe(task: str):
    return importlib.import_module(RECIPES[task])


def setup_for(cfg: Config) -> Setup:
    return recipe(cfg.task).setup(cfg)


def finetune_setup(cfg: Config) -> Setup:
    return recipe("finetune").setup(cfg)


def pretrain_setup(cfg: Config) -> Setup:
    return recipe("pretrain").setup(cfg)


def run(cfg: Config, workdir: str | Path, *, overwrite: bool = False) -> dict:
    """Train per ``cfg.task`` in ``workdir`` (resuming if it has a checkpoint of the same run;
    ``overwrite`` starts afresh where it holds another)."""
    runlog.setup_logging()
    runlog.enable_compilation_cache()
    if hostmem.huge_pages_active():
        logging.getLogger("jaxtl").info(
            "host memory: malloc backs large blocks with transparent huge pages (%s=off to not)",
            hostmem.SWITCH)
    if not overwrite:  # refuse another run's workdir before loading any data or weights
        workdir_lib.check_rerun(Path(workdir), cfg.to_dict(), overwrite=False)
    return train.train_loop(cfg, Path(workdir), setup_for(cfg), overwrite=overwrite)
