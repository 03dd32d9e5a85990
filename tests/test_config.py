"""Config loading: YAML + dotted overrides, unknown keys and impossible values named."""

from pathlib import Path

import pytest

from jaxtl import config as C
from jaxtl.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = C.load(path)
    assert cfg.task in C.TASKS


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {pretrained: x}\ndata: {train_file: t.csv}\n")
    cfg = C.load(path, ["optim.lr=3e-5", "train.epochs=2", "optim.freeze=[embeddings, layers:2]",
                        "data.text_pair_column=sentence2", "mesh.data=2"])
    assert cfg.optim.lr == 3e-5 and cfg.train.epochs == 2.0
    assert cfg.optim.freeze == ["embeddings", "layers:2"]
    assert cfg.data.text_pair_column == "sentence2" and cfg.mesh.data == 2


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("trian.seed=1", "unknown config key 'trian'"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("optim.lr=-1", "optim.lr=-1.0 must be positive"),
    ("train.batch_size=2.5", "train.batch_size: expected an integer"),
    ("optim.name=sgd", "optim.name='sgd': use one of adamw, lamb"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio=1.5 must be in [0, 1)"),
    ("mesh.data=-1", None),
    ("mesh.fsdp=-1", "only one of mesh.data, mesh.fsdp, mesh.tensor may be -1"),
    ("optim.grad_accum_steps=3", "not divisible by optim.grad_accum_steps=3"),
    ("task=distill", "task='distill'"),
])
def test_bad_values_are_named(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text("model: {pretrained: x}\ndata: {train_file: t.csv}\ntrain: {batch_size: 16}\n")
    if message is None:
        C.load(path, [override])
        return
    with pytest.raises(ConfigError) as err:
        C.load(path, [override])
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        C.load(tmp_path / "nope.yaml")


def test_pretrain_section_rejects_finetune_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: pretrain\nmodel: {size: tiny, tokenizer: t}\n"
                    "data: {train_files: [a.txt], label_column: label}\n")
    with pytest.raises(ConfigError, match="unknown config key 'data.label_column'"):
        C.load(path)
