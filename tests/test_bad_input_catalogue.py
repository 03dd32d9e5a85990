"""Every bad input through the real CLI, in one table (issue 9): a subprocess per case that must
exit 2 with ONE ``jaxtl: error:`` line naming the culprit (file, key or value), and no traceback.

The data files are also checked message by message in tests/test_data_tables.py; config values by
tests/test_config.py and tests/test_config_properties.py; checkpoint faults by test_checkpoint.py.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
import yaml
from helpers import make_tiny_checkpoint, make_tokenizer, sentiment_rows, write_csv

REPO = Path(__file__).resolve().parent.parent
GOOD_ROWS = b"sentence,label\nthe movie was good,positive\nawful film,negative\n"

# Bad data files. Each: name, content (None: a link to /proc/self/mem, which exists but fails to
# read with EIO), which data key gets it, and what the error line must also say.
DATA_CASES = [
    ("unreadable.csv", None, "train_file", "cannot read the file"),
    ("latin1.csv", GOOD_ROWS + b"caf\xe9 noir,negative\n", "train_file", "byte 0xe9 at offset"),
    ("ragged.csv", GOOD_ROWS + b"hi, there,positive\n", "train_file", "line 4: 3 fields"),
    ("emptylabel.csv", GOOD_ROWS + b"so so,\n", "train_file", "line 4: column 'label' is empty"),
    ("nolabel.csv", b"sentence,stars\nok,5\nbad,1\n", "train_file", "no column 'label'"),
    ("unseen.csv", GOOD_ROWS + b"meh,neutral\n", "validation_file", "label 'neutral'"),
    ("json.csv", json.dumps([{"sentence": "ok", "label": "positive"}]).encode(), "train_file",
     "looks like a JSON document"),
    ("archive.csv", gzip.compress(GOOD_ROWS), "train_file", "looks like a gzip archive"),
    ("empty.csv", b"", "train_file", "the file is empty"),
]


class _WritesAFile:
    """A pickle that, if unpickled without weights_only, creates the file MARKER."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_data")
    tok = make_tokenizer(root)
    ckpt = make_tiny_checkpoint(root, tok, cls=transformers.BertModel)
    train = write_csv(root / "train.csv", ["sentence", "label"], sentiment_rows(64, seed=1))
    return root, ckpt, train


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAXTL_COMPILATION_CACHE="off")
    return subprocess.run([sys.executable, "-m", "jaxtl.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_clear_error(done: subprocess.CompletedProcess, *culprits: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "jaxtl: error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("jaxtl: error:"), errors[0]
    for culprit in culprits:
        assert culprit in errors[0], (culprit, errors[0])


def finetune_config(tmp_path: Path, ckpt: Path, data: dict, **sections) -> Path:
    config = {
        "task": "finetune",
        "model": {"pretrained": str(ckpt)},
        "data": {"max_seq_length": 32, "bucket_sizes": [16, 32], **data},
        "train": {"batch_size": 16, "epochs": 1, "seed": 0, "progress": False,
                  "tensorboard": False},
    }  # fmt: skip
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_finetune(tmp_path: Path, ckpt: Path, data: dict) -> subprocess.CompletedProcess:
    path = finetune_config(tmp_path, ckpt, data)
    return run_cli(["finetune", "--config", str(path), "--workdir", str(tmp_path / "run")])


@pytest.mark.parametrize("name, content, key, says", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file_exits_2_with_one_line_naming_it(setup, tmp_path, name, content, key, says):
    _, ckpt, train = setup
    bad = tmp_path / name
    if content is None:
        os.symlink("/proc/self/mem", bad)
    else:
        bad.write_bytes(content)
    data = {"train_file": train, key: str(bad)}
    assert_one_clear_error(run_finetune(tmp_path, ckpt, data), str(bad), says)


# ------------------------------------------------------------------------- everything but data
# Each case: (id, build(setup, tmp_path) -> (CLI arguments, strings the error line must hold)).


def _copy_ckpt(ckpt: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt, folder)
    return folder


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _finetune(tmp_path, ckpt, train, *extra, data=None, **sections):
    config = finetune_config(tmp_path, ckpt, {"train_file": train, **(data or {})}, **sections)
    return ["finetune", "--config", str(config), "--workdir", str(tmp_path / "run"), *extra]


def case_unknown_nested_key(ctx, tmp_path):
    _, ckpt, train = ctx
    return _finetune(tmp_path, ckpt, train, "--set", "optim.lrr=1e-3"), ["optim.lrr"]


def case_bad_list_item(ctx, tmp_path):
    _, ckpt, train = ctx
    return _finetune(tmp_path, ckpt, train, "--set", "data.bucket_sizes=[16, x]"), ["data.bucket_sizes[1]"]


def case_key_the_task_does_not_use(ctx, tmp_path):
    _, ckpt, train = ctx
    return _finetune(tmp_path, ckpt, train, "--set", "model.size=tiny"), ["model.size"]


def case_missing_config_file(ctx, tmp_path):
    return ["finetune", "--config", str(tmp_path / "nope.yaml"), "--workdir", str(tmp_path / "w")], ["nope.yaml"]


def case_invalid_yaml(ctx, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: finetune\ndata: [unclosed\n")
    return ["finetune", "--config", str(bad), "--workdir", str(tmp_path / "w")], ["bad.yaml"]


def case_missing_checkpoint_folder(ctx, tmp_path):
    _, _, train = ctx
    return _finetune(tmp_path, tmp_path / "no-such-model", train), ["no-such-model"]


def case_truncated_safetensors(ctx, tmp_path):
    _, ckpt, train = ctx
    folder = _copy_ckpt(ckpt, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return _finetune(tmp_path, folder, train), ["model.safetensors"]


def case_checkpoint_of_another_shape(ctx, tmp_path):
    _, ckpt, train = ctx
    folder = _copy_ckpt(ckpt, tmp_path)
    _edit_json(folder / "config.json", intermediate_size=48)
    return _finetune(tmp_path, folder, train), ["intermediate.dense", "wrong shape"]


def case_unsupported_model_type(ctx, tmp_path):
    _, ckpt, train = ctx
    folder = _copy_ckpt(ckpt, tmp_path)
    _edit_json(folder / "config.json", model_type="gpt2")
    return _finetune(tmp_path, folder, train), ["config.json", "gpt2"]


def case_malicious_pickle(ctx, tmp_path):
    _, ckpt, train = ctx
    folder = _copy_ckpt(ckpt, tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with (folder / "pytorch_model.bin").open("wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _WritesAFile(str(marker))}, f)
    return _finetune(tmp_path, folder, train), ["pytorch_model.bin"]


def case_predict_with_a_bare_encoder(ctx, tmp_path):
    root, ckpt, train = ctx  # a bare BertModel folder: a classifier would be random
    return ["predict", "--model", str(ckpt), "--file", train, "--output", str(tmp_path / "p.csv")], \
        [str(ckpt), "bare encoder"]


def case_evaluate_with_a_head_missing_its_weights(ctx, tmp_path):
    _, ckpt, train = ctx  # config.json claims a classifier that the weights do not hold
    folder = _copy_ckpt(ckpt, tmp_path)
    _edit_json(folder / "config.json", architectures=["BertForSequenceClassification"])
    return ["evaluate", "--model", str(folder), "--file", train], [str(folder), "classifier.weight"]


def case_convert_over_its_own_input(ctx, tmp_path):
    _, ckpt, _ = ctx
    folder = _copy_ckpt(ckpt, tmp_path)
    return ["convert", str(folder), str(folder), "--head", "classification"], ["over its own input"]


def case_export_without_checkpoints(ctx, tmp_path):
    (tmp_path / "empty-run").mkdir()
    return ["export", "--workdir", str(tmp_path / "empty-run"), "--out", str(tmp_path / "o")], ["empty-run"]


def case_rerun_with_another_config(ctx, tmp_path):
    _, ckpt, train = ctx
    args = _finetune(tmp_path, ckpt, train)
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = yaml.safe_load(Path(args[2]).read_text())
    from jaxtl import config as config_lib

    saved = config_lib.from_dict(config).to_dict()
    saved["train"]["seed"] = 7  # the run in the workdir was made with another seed
    (workdir / "config.yaml").write_text(yaml.safe_dump(saved))
    return args, ["train.seed", "7 -> 0", "--overwrite"]


OTHER_CASES = [(name[len("case_"):], fn) for name, fn in sorted(globals().items()) if name.startswith("case_")]


@pytest.mark.parametrize("build", [fn for _, fn in OTHER_CASES], ids=[name for name, _ in OTHER_CASES])
def test_bad_input_exits_2_with_one_line_naming_it(setup, tmp_path, build):
    args, culprits = build(setup, tmp_path)
    assert_one_clear_error(run_cli(args), *culprits)
    assert not (tmp_path / "pwned").exists()  # no pickle ever ran code


def test_the_catalogue_is_large():
    print(f"\ncatalogue: {len(DATA_CASES)} bad data files + {len(OTHER_CASES)} other bad inputs")
    assert len(DATA_CASES) + len(OTHER_CASES) >= 20
