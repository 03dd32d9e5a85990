"""Bad data through the real CLI: ``python -m jaxtl.cli finetune`` on each bad file (issue 9).

Each run must exit 2 with one ``jaxtl: error:`` line that names the file, and no traceback. The
same files, checked message by message, are in tests/test_data_tables.py.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
import yaml
from helpers import make_tiny_checkpoint, make_tokenizer, sentiment_rows, write_csv

REPO = Path(__file__).resolve().parent.parent
GOOD_ROWS = b"sentence,label\nthe movie was good,positive\nawful film,negative\n"

# Each: name, content (None: a link to /proc/self/mem, which exists but fails to read with EIO),
# which data key gets it, and what the error line must also say.
CASES = [
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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_data")
    tok = make_tokenizer(root)
    ckpt = make_tiny_checkpoint(root, tok, cls=transformers.BertModel)
    train = write_csv(root / "train.csv", ["sentence", "label"], sentiment_rows(64, seed=1))
    return root, ckpt, train


def run_finetune(tmp_path: Path, ckpt: Path, data: dict) -> subprocess.CompletedProcess:
    config = {
        "task": "finetune",
        "model": {"pretrained": str(ckpt)},
        "data": {"max_seq_length": 32, "bucket_sizes": [16, 32], **data},
        "train": {"batch_size": 16, "epochs": 1, "seed": 0, "progress": False,
                  "tensorboard": False},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [sys.executable, "-m", "jaxtl.cli", "finetune", "--config", str(path),
               "--workdir", str(tmp_path / "run")]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, content, key, says", CASES, ids=[c[0] for c in CASES])
def test_bad_data_file_exits_2_with_one_line_naming_it(setup, tmp_path, name, content, key, says):
    _, ckpt, train = setup
    bad = tmp_path / name
    if content is None:
        os.symlink("/proc/self/mem", bad)
    else:
        bad.write_bytes(content)
    data = {"train_file": train, key: str(bad)}
    done = run_finetune(tmp_path, ckpt, data)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "jaxtl: error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("jaxtl: error:") and str(bad) in errors[0], errors[0]
    assert says in errors[0], errors[0]
