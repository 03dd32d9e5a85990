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
    ("optim.name=adam", "optim.name='adam': use one of adamw, lamb, sgd"),
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


FINETUNE = "model: {pretrained: x}\ndata: {train_file: t.csv}\ntrain: {batch_size: 16}\n"
PRETRAIN = "task: pretrain\nmodel: {size: tiny, tokenizer: t}\ndata: {train_files: [a.txt]}\n"


def load_with(tmp_path, text, overrides=()):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return C.load(path, list(overrides))


def assert_refused(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_with(tmp_path, text, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    # list items and dict values are typed, and named at any depth
    ("data.bucket_sizes=[32, a]", "data.bucket_sizes[1]: expected an integer, got 'a'"),
    ("data.bucket_sizes=[32, -3]", "data.bucket_sizes[1]=-3 must be positive"),
    ("data.bucket_sizes=[64, 32]", "data.bucket_sizes=[64, 32] must be increasing"),
    ("optim.freeze=[3]", "optim.freeze[0]: expected a string, got 3"),
    ("optim.freeze=[layers:x]", "optim.freeze[0]='layers:x'"),
    ("data.labels=[neg, [pos]]", "data.labels[1]: expected a string or an integer, got ['pos']"),
    ("data.labels=[yes, no]", "data.labels[0]: expected a string or an integer, got True"),
    ("data.labels=[neg, neg]", "data.labels=['neg', 'neg'] must be distinct"),
    ("data.labels=[only]", "data.labels=['only'] needs at least 2 names"),
    ("mesh.rules.heads=3", "mesh.rules.heads: expected a string, a list of strings or null, got 3"),
    ("mesh.rules.heads=[tensor, 3]", "mesh.rules.heads[1]: expected a string, got 3"),
    ("mesh.rules.hidden=fsdp", "mesh.rules: unknown logical axis 'hidden'"),
    ("mesh.rules.heads=model", "mesh.rules.heads: 'model' is not a mesh axis"),
    ("data.text_column=''", "data.text_column: empty string"),
    # ranges of every section
    ("optim.warmup_steps=-1", "optim.warmup_steps=-1 must be >= 0"),
    ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
    ("optim.lr=1e999", "optim.lr: expected a finite number, got '1e999'"),
    ("optim.end_lr_ratio=1.5", "optim.end_lr_ratio=1.5 must be in [0, 1]"),
    ("optim.b1=1.0", "optim.b1=1.0 must be in [0, 1)"),
    ("optim.b2=-0.5", "optim.b2=-0.5 must be in [0, 1)"),
    ("optim.eps=0", "optim.eps=0.0 must be positive"),
    ("optim.layerwise_lr_decay=0", "optim.layerwise_lr_decay=0.0 must be in (0, 1]"),
    ("model.hidden_dropout_prob=1.0", "model.hidden_dropout_prob=1.0 must be in [0, 1)"),
    ("model.classifier_dropout=-0.1", "model.classifier_dropout=-0.1 must be in [0, 1)"),
    ("model.dtype=float64", "model.dtype='float64': use one of float32, bfloat16"),
    ("train.seed=-1", "train.seed=-1 must be in [0, 2**32)"),
    ("data.split_seed=-5", "data.split_seed=-5 must be in [0, 2**32)"),
    ("train.epochs=.inf", "train.epochs: expected a finite number, got inf"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints=0 must be positive"),
    ("train.save_every_minutes=0", "train.save_every_minutes=0.0 must be positive"),
    ("train.nonfinite=ignore", "train.nonfinite='ignore': use one of stop, skip"),
    ("train.best_mode=maximum", "train.best_mode='maximum': use one of max, min"),
    ("train.best_metric=''", "train.best_metric: empty string"),
    ("data.max_seq_length=0", "data.max_seq_length=0 must be positive"),
    ("data.test_fraction=-0.1", "data.test_fraction=-0.1 must be in [0, 1)"),
    # a value the task does not use is an error, not silently ignored
    ("model.size=tiny", "model.size='tiny' is only used by `task: pretrain` from scratch"),
    ("model.overrides.hidden_size=64", "model.overrides (hidden_size) is only used by `task: pretrain`"),
    ("model.overrides.nonsense=1", "model.overrides (nonsense) is only used by `task: pretrain`"),
    ("model.family=roberta", "model.family='roberta' is only used by `task: pretrain` from scratch"),
    ("data.dataset_config=sst2", "data.dataset_config='sst2' is only used with data.dataset"),
    ("data.test_split=test", "data.test_split='test' is only used with data.dataset"),
    ("data.dataset=glue", "set either data.train_file or data.dataset, not both"),
    ("data.regression=true", None),
    ("data.validation_file=v.csv", None),
])
def test_finetune_values_are_checked(tmp_path, override, message):
    if message is None:
        load_with(tmp_path, FINETUNE, [override])
    else:
        assert_refused(tmp_path, FINETUNE, [override], message)


@pytest.mark.parametrize("overrides, message", [
    (["data.regression=true", "data.labels=[a, b]"],
     "data.labels is not used with data.regression: true"),
    (["data.validation_file=v.csv", "data.validation_fraction=0.1"],
     "data.validation_fraction=0.1 is not used when data.validation_file is set"),
    (["data.validation_fraction=0.6", "data.test_fraction=0.4"],
     "data.validation_fraction + data.test_fraction must be below 1"),
])
def test_finetune_combinations_are_checked(tmp_path, overrides, message):
    assert_refused(tmp_path, FINETUNE, overrides, message)


@pytest.mark.parametrize("override, message", [
    ("model.pretrained=some/folder", "model.pretrained and model.size"),
    ("model.size=huge", "model.size='huge': use one of"),
    ("model.family=gpt", "model.family='gpt': use one of bert"),
    ("model.overrides.hiddn_size=64", "unknown config key 'model.overrides.hiddn_size'"),
    ("model.overrides.hidden_size=big", "model.overrides.hidden_size: expected an integer, got 'big'"),
    ("model.overrides.hidden_size=true", "model.overrides.hidden_size: expected an integer, got True"),
    ("model.overrides.hidden_size=0", "model.overrides.hidden_size=0 must be positive"),
    ("model.overrides.pad_token_id=-1", "model.overrides.pad_token_id=-1 must be >= 0"),
    ("model.overrides.hidden_dropout_prob=1.5", "model.overrides.hidden_dropout_prob=1.5 must be in [0, 1)"),
    ("model.overrides.hidden_act=[gelu]", "model.overrides.hidden_act: expected a string, got ['gelu']"),
    ("model.overrides.hidden_act=swiglu", "model.overrides: hidden_act='swiglu' is not supported"),
    ("model.overrides.num_attention_heads=3", "model.overrides: hidden_size=128 is not divisible"),
    ("model.overrides.dtype=bfloat16", "unknown config key 'model.overrides.dtype'"),
    ("model.overrides.labels=[a, b]", "unknown config key 'model.overrides.labels'"),
    ("data.train_files=[a.txt, 3]", "data.train_files[1]: expected a string, got 3"),
    ("data.train_files=[a.txt, '']", "data.train_files[1]: empty string"),
    ("data.dataset=wikitext", "set either data.train_files or data.dataset, not both"),
    ("data.text_column=body", "data.text_column='body' is only used with data.dataset"),
    ("data.mlm_probability=0", "data.mlm_probability=0.0 must be in (0, 1)"),
    ("data.short_seq_prob=1.5", "data.short_seq_prob=1.5 must be in [0, 1]"),
    ("data.max_predictions=0", "data.max_predictions=0 must be positive"),
    ("data.random_token_prob=-0.1", "data.random_token_prob=-0.1 must be in [0, 1]"),
    ("model.overrides.hidden_size=64.0", None),
    ("model.overrides.vocab_size=50", None),
])
def test_pretrain_values_are_checked(tmp_path, override, message):
    if message is None:
        load_with(tmp_path, PRETRAIN, [override])
    else:
        assert_refused(tmp_path, PRETRAIN, [override], message)


def test_short_seq_prob_needs_nsp(tmp_path):
    assert_refused(tmp_path, PRETRAIN, ["data.nsp=false", "data.short_seq_prob=0.2"],
                   "data.short_seq_prob=0.2 is only used with data.nsp: true or data.sop: true")


def test_overrides_are_typed_for_the_model(tmp_path):
    cfg = load_with(tmp_path, PRETRAIN, ["model.overrides.hidden_size=64.0",
                                         "model.overrides.layer_norm_eps=1e-7"])
    assert cfg.model.overrides == {"hidden_size": 64, "layer_norm_eps": 1e-7}
    assert type(cfg.model.overrides["hidden_size"]) is int


def test_architecture_fields():
    fields = C.architecture_fields("bert")
    assert {"vocab_size", "hidden_size", "hidden_act", "classifier_dropout"} <= fields
    assert not fields & {"dtype", "param_dtype", "remat", "labels"}
    with pytest.raises(ConfigError, match="model.family='gpt'"):
        C.architecture_fields("gpt")


def test_new_train_fields_have_defaults(tmp_path):
    cfg = load_with(tmp_path, FINETUNE)
    assert cfg.train.save_every_minutes == 10.0 and cfg.train.nonfinite == "stop"
    cfg = load_with(tmp_path, FINETUNE, ["train.save_every_minutes=null", "train.nonfinite=skip"])
    assert cfg.train.save_every_minutes is None and cfg.train.nonfinite == "skip"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_resolved_config_round_trips(path):
    """The workdir's config.yaml (cfg.to_dict()) loads back to the same config (jaxtl export)."""
    cfg = C.load(path)
    assert C.from_dict(cfg.to_dict()) == cfg


def test_no_eval_in_config_module():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(C))
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "eval" not in calls and "exec" not in calls


@pytest.mark.parametrize("text, message", [
    ("model: {pretrained: x\n", "is not valid YAML"),
    ("- a\n- b\n", "expected a mapping at the top level, got a list"),
    ("model: [1, 2]\n", "model: expected a mapping, got [1, 2]"),
    ("1: 2\n", "unknown config key '1'"),
    ("model: {pretrained: x}\ndata: {train_file: t.csv}\noptim: {lr: 1e-3, 7: x}\n",
     "unknown config key 'optim.7'"),
])
def test_bad_files_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_with(tmp_path, text)
    assert message in str(err.value) and "c.yaml" in str(err.value)
    assert "\n" not in str(err.value)


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"model: {pretrained: \xff}\n")
    with pytest.raises(ConfigError, match="c.yaml is not UTF-8 text"):
        C.load(path)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=[1", "--set optim.lr=[1: the value is not valid YAML"),
    ("optim..lr=1", "--set 'optim..lr=1': 'optim..lr' is not a dotted key"),
    ("=1", "is not a dotted key"),
    ("task=finetune", None),
    ("task.x=1", "--set task.x: 'task' is not a section"),
])
def test_bad_set_is_named(override, message):
    overrides = ["task=finetune", "model.pretrained=x", "data.train_file=t.csv", override]
    if message is None:
        C.load(None, overrides)
        return
    with pytest.raises(ConfigError) as err:
        C.load(None, overrides)
    assert message in str(err.value)


def test_set_into_an_empty_section(tmp_path):
    cfg = load_with(tmp_path, "task: pretrain\nmodel:\ndata: {train_files: [a.txt]}\n",
                    ["model.size=tiny", "model.tokenizer=t"])
    assert cfg.model.size == "tiny"


def test_from_dict_refuses_a_non_mapping():
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        C.from_dict([1, 2])


@pytest.mark.parametrize("text, key", [
    ("model: {pretrained: x}\ndata: {train_file: t.csv, bukket_sizes: [8]}\n", "data.bukket_sizes"),
    ("model: {pretrained: x}\ndata: {train_file: t.csv, bucket_sizes: [8, x]}\n", "data.bucket_sizes[1]"),
    ("model: {pretrained: x}\ndata: {train_file: t.csv}\noptim: {warmup_steps: -10}\n",
     "optim.warmup_steps"),
    ("model: {pretrained: x, size: base}\ndata: {train_file: t.csv}\n", "model.size"),
])
def test_cli_names_the_bad_key(tmp_path, text, key):
    import os
    import subprocess
    import sys

    (tmp_path / "bad.yaml").write_text(text)
    root = Path(__file__).parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtl.cli", "finetune", "--config", "bad.yaml", "--workdir", "w"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxtl: error:"), proc.stderr
    assert key in lines[0] and "bad.yaml" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


def test_a_new_family_in_the_registry_is_validated_by_config(tmp_path, monkeypatch):
    import dataclasses as dc

    @dc.dataclass(frozen=True)
    class TinyConfig:
        dim: int = 8
        dropout: float = 0.1
        dtype: str = "float32"

    from jaxtl import families

    families.names()  # the real families registered first
    monkeypatch.setitem(families._REGISTRY, "toy", families.FamilySpec(
        name="toy", model_types=("toy",), config_cls=TinyConfig, trunk="toy", models={},
        head_prefixes=(), layer_depth=lambda path, n: 0, presets={"small": {"dim": 16}}))
    assert C.architecture_fields("toy") == {"dim", "dropout"}
    toy = ["model.family=toy", "model.size=small"]
    cfg = load_with(tmp_path, PRETRAIN, toy + ["model.overrides.dim=32"])
    assert cfg.model.family == "toy" and cfg.model.overrides == {"dim": 32}
    assert_refused(tmp_path, PRETRAIN, toy + ["model.overrides.hidden_size=32"],
                   "unknown config key 'model.overrides.hidden_size' (fields of a toy model: dim, dropout)")
    assert_refused(tmp_path, PRETRAIN, toy + ["model.overrides.dropout=1"],
                   "model.overrides.dropout=1.0 must be in [0, 1)")
    assert_refused(tmp_path, PRETRAIN, ["model.family=toy", "model.size=tiny"],
                   "model.size='tiny': use one of small (sizes of a toy model)")
    assert_refused(tmp_path, FINETUNE, ["model.family=toy"],
                   "model.family='toy' is only used by `task: pretrain` from scratch")
