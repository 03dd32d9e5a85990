"""Start-up without torch: where torch is installed (as it is here, and for most people coming
from HF PyTorch) two of jaxtl's imports pulled it in, 2.4 s of every run's start-up.

* ``hf.tokenizer`` loads the class ``tokenizer_config.json`` names directly: the same tokenizer
  AutoTokenizer gives, without AutoTokenizer's AutoConfig detour that imports torch;
* the TensorBoard writer is imported with torch hidden (tensorboardX imports it only to accept
  torch tensors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from helpers import make_tokenizer

from jaxtl import hf

TEXTS = ["The movie was GREAT, wasn't it?", "awful; boring film", "ünïcödé and 123"]


def roberta_folder(root: Path) -> Path:
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + list("abcdefghijklmnopqrstuvwxyz") + ["Ġ"]
    folder = root / "roberta"
    transformers.RobertaTokenizer(vocab={w: i for i, w in enumerate(vocab)}, merges=[]).save_pretrained(str(folder))
    return folder


def distilbert_folder(root: Path) -> Path:
    bert = make_tokenizer(root)
    folder = root / "distilbert"
    transformers.DistilBertTokenizer(vocab=bert.get_vocab()).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    make_tokenizer(root)
    renamed = root / "named-fast"  # hub folders saved by transformers 4 name the Fast class
    renamed.mkdir()
    for f in (root / "tokenizer").iterdir():
        (renamed / f.name).write_bytes(f.read_bytes())
    config = json.loads((renamed / "tokenizer_config.json").read_text())
    (renamed / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "BertTokenizerFast"}))
    return {"bert": root / "tokenizer", "bert-fast-name": renamed,
            "roberta": roberta_folder(root), "distilbert": distilbert_folder(root),
            "minilm (real)": hf.resolve("asset:all-MiniLM-L6-v2")}


@pytest.mark.parametrize("kind", ["bert", "bert-fast-name", "roberta", "distilbert", "minilm (real)"])
def test_same_tokenizer_as_autotokenizer(folders, kind):
    ours = hf.tokenizer(folders[kind])
    auto = transformers.AutoTokenizer.from_pretrained(str(folders[kind]))
    assert type(ours) is type(auto), (type(ours), type(auto))
    assert len(ours) == len(auto)
    assert ours(TEXTS, text_pair=TEXTS[::-1])["input_ids"] == auto(TEXTS, text_pair=TEXTS[::-1])["input_ids"]


def test_unknown_class_name_falls_back_to_autotokenizer(folders, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    for f in folders["bert"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "NoSuchTokenizer"}))
    ours, auto = hf.tokenizer(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    assert type(ours) is type(auto)
    assert ours(TEXTS)["input_ids"] == auto(TEXTS)["input_ids"]


def test_tokenizer_and_tensorboard_writer_do_not_import_torch(folders, tmp_path):
    code = ("import sys; from pathlib import Path; from jaxtl import hf, runlog; "
            "hf.tokenizer(sys.argv[1]); print('torch' in sys.modules); "
            "w = runlog.MetricsWriter(Path(sys.argv[2]), tensorboard=True, resume_step=-1); "
            "w.write({'step': 1, 'split': 'train', 'loss': 0.5}); w.close(); "
            "print('torch' in sys.modules); import torch; print(torch.tensor(1.0).item())")
    done = subprocess.run([sys.executable, "-c", code, str(folders["minilm (real)"]), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # torch stays importable afterwards (the writer's import hides it only while it runs)
    assert done.stdout.split() == ["False", "False", "1.0"], done.stdout
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert '"loss": 0.5' in (tmp_path / "metrics.jsonl").read_text()


def test_recipes_import_neither_scikit_learn_nor_scipy_until_a_split_is_scored():
    # The token-classification recipe imports jaxtl.metrics at start-up; the metrics import the
    # two libraries (2 s of that recipe's start) where they score.
    code = ("import sys, jaxtl.cli, jaxtl.tasks as t\n"
            "for task in t.RECIPES: t.recipe(task)\n"
            "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))\n"
            "from jaxtl import metrics\n"
            "print(metrics.classification_metrics([0, 1, 1], [0, 1, 0])['accuracy'])\n"
            "print(round(metrics.regression_metrics([1.0, 2.0, 3.0], [1.0, 2.5, 2.9])['spearman'], 3))\n"
            "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["[]", str(2 / 3), "1.0", "['scipy', 'sklearn']"], done.stdout
