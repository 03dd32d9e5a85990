"""Property tests of config parsing: whatever YAML, keys, values or ``--set`` overrides come in,
the answer is a valid Config or a one-line ConfigError naming the key (or the file) — never any
other exception. Deterministic (derandomize) so CI sees the same examples on every run."""

import dataclasses
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxtl import config as C
from jaxtl.errors import ConfigError

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

BASES = {
    "finetune": {"task": "finetune", "model": {"pretrained": "x"}, "data": {"train_file": "t.csv"},
                 "train": {"batch_size": 16}},
    "pretrain": {"task": "pretrain", "model": {"size": "tiny", "tokenizer": "t"},
                 "data": {"train_files": ["a.txt"]}},
}
SECTIONS = {"model": C.ModelConfig, "optim": C.OptimConfig, "mesh": C.MeshConfig,
            "train": C.TrainConfig}


def known_keys(task: str) -> list[str]:
    sections = dict(SECTIONS, data=C.DATA_CLASSES[task])
    return sorted(f"{name}.{f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls))


SECTION_WORD = re.compile(r"\b(task|model|data|optim|mesh|train)\b")

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.integers()
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["tiny", "bert", "stop", "skip", "data", "fsdp", "tensor", "heads",
                              "embeddings", "layers:2", "0.5", "1e-3", "1e999", "nan", "yes", ""]))
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(["hidden_size", "heads", "vocab_size"]),
                      children, max_size=4),
    max_leaves=8,
)
# Keys: random text, or a dict key YAML allows (numbers, booleans, null).
random_keys = st.text(max_size=10) | st.integers() | st.booleans() | st.none()


def assert_clean(call, *names):
    """``call()`` gives a Config, or a one-line ConfigError naming one of ``names``."""
    try:
        cfg = call()
    except ConfigError as e:
        message = str(e)
        assert message and len(message.splitlines()) == 1, repr(message)
        if names:
            assert any(str(n) in message for n in names), (message, names)
        return message
    assert isinstance(cfg, C.Config)
    C.validate(cfg)
    return None


@SETTINGS
@given(task=st.sampled_from(sorted(BASES)), data=st.data(), value=values)
def test_any_value_at_a_known_key(task, data, value):
    key = data.draw(st.sampled_from(known_keys(task)))
    raw = yaml.safe_load(yaml.safe_dump(BASES[task]))
    section, name = key.split(".")
    raw.setdefault(section, {})[name] = value
    assert_clean(lambda: C.from_dict(raw), key)


@SETTINGS
@given(task=st.sampled_from(sorted(BASES)), section=st.sampled_from(["", *SECTIONS, "data"]),
       key=random_keys, value=values)
def test_any_key_in_any_section(task, section, key, value):
    raw = yaml.safe_load(yaml.safe_dump(BASES[task]))
    node = raw if not section else raw.setdefault(section, {})
    node[key] = value
    message = assert_clean(lambda: C.from_dict(raw))
    if message is not None:  # names the bad key (a key that exists may get a bad value instead)
        shown = key if isinstance(key, str) and key.isprintable() else repr(key)
        assert shown in message or SECTION_WORD.search(message), message


@SETTINGS
@given(raw=values | st.dictionaries(random_keys | st.sampled_from(["task", *SECTIONS, "data"]),
                                    values, max_size=6))
def test_from_dict_takes_anything(raw):
    assert_clean(lambda: C.from_dict(raw))


@SETTINGS
@given(task=st.sampled_from(sorted(BASES)), data=st.data(),
       model_overrides=st.dictionaries(
           st.sampled_from(["hidden_size", "num_attention_heads", "hidden_act", "vocab_size",
                            "pad_token_id", "layer_norm_eps", "hidden_dropout_prob",
                            "classifier_dropout", "problem_type", "dtype", "labels"])
           | st.text(max_size=8),
           values, max_size=3))
def test_any_architecture_overrides(task, data, model_overrides):
    raw = yaml.safe_load(yaml.safe_dump(BASES[task]))
    raw["model"]["overrides"] = model_overrides
    if task == "pretrain" and data.draw(st.booleans()):
        raw["model"] = {"pretrained": "x", "overrides": model_overrides}
    assert_clean(lambda: C.from_dict(raw), "model.overrides")


# Text made of YAML's syntax characters and config words: mostly invalid or odd YAML.
yaml_text = st.lists(
    st.sampled_from(list("abkmostz019 :-[]{},#&*!|>'\"%@`?.\n\t\\=_") +
                    ["task", "model", "data", "optim", "pretrained", "lr", "train_file",
                     "2020-13-01", "!!python/name:os.system", "&a [*a]", "\x00", "\xff", "\u2028",
                     "\x85", "é"]),
    max_size=30,
).map("".join)
dumped = values.map(lambda v: yaml.safe_dump(v)) | st.builds(
    lambda base, extra: yaml.safe_dump({**base, **extra}),
    st.sampled_from(list(BASES.values())),
    st.dictionaries(st.sampled_from(["task", *SECTIONS, "data"]), values, max_size=2),
)


@pytest.fixture(scope="module")
def config_path():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "random.yaml"


@SETTINGS
@given(text=yaml_text | dumped)
def test_any_yaml_file(config_path, text):
    config_path.write_text(text, encoding="utf-8")
    assert_clean(lambda: C.load(config_path), str(config_path))


@SETTINGS
@given(data=st.data(), task=st.sampled_from(sorted(BASES)))
def test_any_set_overrides(data, task):
    key = st.sampled_from(known_keys(task) + ["task", "model", "mesh.rules.heads",
                                              "model.overrides.hidden_size"]) | st.text(max_size=12)
    value = values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()) | yaml_text
    assignments = data.draw(st.lists(st.tuples(key, value), min_size=1, max_size=3))
    overrides = [f"{k}={v}" for k, v in assignments] + data.draw(st.lists(yaml_text, max_size=1))
    raw = yaml.safe_load(yaml.safe_dump(BASES[task]))
    message = assert_clean(lambda: C.from_dict(C.apply_overrides(raw, overrides)))
    if message is not None:
        parts = [k.split(".")[0].strip() for k, _ in assignments]
        assert "--set" in message or SECTION_WORD.search(message) or any(
            p and p in message for p in parts), (message, overrides)
