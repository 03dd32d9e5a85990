"""Bad checkpoints give one clear error that names the file, key or weight at fault.

Each case starts from a real (tiny) ``transformers`` checkpoint and breaks one thing. The errors
are :class:`jaxtl.errors.CheckpointError` (files and weights) or :class:`jaxtl.errors.ConfigError`
(``config.json`` values); both are ``ValueError``s.
"""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import jaxtl.hf
from jaxtl.errors import CheckpointError
from jaxtl.errors import ConfigError

TINY = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=24,
)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    """A valid BertForPreTraining checkpoint; tests copy it and break the copy."""
    folder = tmp_path_factory.mktemp("good") / "ckpt"
    torch.manual_seed(0)
    transformers.BertForPreTraining(transformers.BertConfig(**TINY)).save_pretrained(str(folder))
    return folder


@pytest.fixture
def folder(good_folder, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(good_folder, copy)
    return copy


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_weights(folder, edit):
    """Rewrite ``model.safetensors`` with ``edit(state)`` applied to its name -> array dict."""
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    path.unlink()
    save_file(state, str(path))


def load_error(folder, head="pretraining", error=CheckpointError) -> str:
    """The message of the one error loading ``folder`` raises; asserts its type."""
    with pytest.raises(error) as info:
        jaxtl.hf.load(folder, head=head)
    return str(info.value)


def test_the_unbroken_checkpoint_loads(folder):
    """Control: the checkpoint every other test breaks loads as it is."""
    model, params = jaxtl.hf.load(folder, head="pretraining")
    assert model.config.num_hidden_layers == 2


def test_missing_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    message = load_error(missing)
    assert str(missing) in message and "does not exist" in message


def test_missing_config_json(folder):
    (folder / "config.json").unlink()
    message = load_error(folder)
    assert str(folder) in message and "config.json" in message


def test_config_json_not_json(folder):
    (folder / "config.json").write_text("{ not json")
    message = load_error(folder)
    assert str(folder / "config.json") in message


@pytest.mark.parametrize("model_type", ["gpt2", "t5"])  # not encoder families jaxtl serves
def test_config_of_another_model_type(folder, model_type):
    edit_config(folder, model_type=model_type)
    message = load_error(folder, error=ConfigError)
    assert "config.json" in message and repr(model_type) in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("position_embedding_type", "relative_key"),
        ("is_decoder", True),
        ("add_cross_attention", True),
    ],
)
def test_unsupported_config_fields_are_refused(folder, key, value):
    edit_config(folder, **{key: value})
    message = load_error(folder, error=ConfigError)
    assert "config.json" in message and key in message and repr(value) in message


def test_unsupported_activation_names_the_file(folder):
    edit_config(folder, hidden_act="gelu_fast")
    message = load_error(folder, error=ConfigError)
    assert "config.json" in message and "gelu_fast" in message


def test_weight_of_the_wrong_shape_is_named(folder):
    name = "bert.encoder.layer.1.attention.self.query.weight"

    def narrow(state):
        state[name] = state[name][:, :31].copy()

    edit_weights(folder, narrow)
    message = load_error(folder)
    assert name in message and "(32, 31)" in message and "(32, 32)" in message


def test_truncated_safetensors_names_the_file(folder):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = load_error(folder)
    assert str(path) in message


def test_corrupt_safetensors_header_names_the_file(folder):
    path = folder / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")  # header length past the end of the file
    assert str(path) in load_error(folder)


def test_folder_without_weights_names_the_folder(folder):
    (folder / "model.safetensors").unlink()
    message = load_error(folder)
    assert str(folder) in message and "no weights" in message and "model.safetensors" in message


def test_missing_shard_names_the_index(folder, tmp_path):
    sharded = tmp_path / "sharded"
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY))
    model.save_pretrained(str(sharded), max_shard_size="20KB")
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    message = load_error(sharded, head="classification")
    assert "model.safetensors.index.json" in message and shard.name in message


def test_unexpected_trunk_weight_is_listed(folder):
    extra = "bert.encoder.layer.5.output.dense.weight"  # a layer the 2-layer config lacks

    def add_layer(state):
        state[extra] = np.zeros((32, 48), np.float32)

    edit_weights(folder, add_layer)
    message = load_error(folder)
    assert "unexpected" in message and extra in message


def test_missing_trunk_weight_is_listed(folder):
    gone = "bert.encoder.layer.0.intermediate.dense.bias"
    edit_weights(folder, lambda state: state.pop(gone))
    message = load_error(folder)
    assert "missing" in message and gone in message


def test_checkpoint_with_more_layers_than_config(folder):
    """A 2-layer config over 3 layers of weights: every extra weight is listed, none dropped."""
    def add_layer(state):
        for name in [n for n in state if n.startswith("bert.encoder.layer.1.")]:
            state[name.replace("layer.1.", "layer.2.")] = state[name].copy()

    edit_weights(folder, add_layer)
    message = load_error(folder)
    assert "bert.encoder.layer.2.attention.self.query.weight" in message
    assert "bert.encoder.layer.2.output.LayerNorm.weight" in message
