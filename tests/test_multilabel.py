"""Multi-label sequence classification (``data.multi_label: true``; HF's ``problem_type:
multi_label_classification``): one sigmoid per label, binary cross-entropy.

Parity against Hugging Face PyTorch ``*ForSequenceClassification`` with that problem_type (random
tiny BERT, DistilBERT and RoBERTa, padded batches, float multi-hot labels): logits within 1e-5,
the loss equal to HF's ``BCEWithLogitsLoss``, every gradient within 1e-4 relative (tolerances of
tests/test_hf_parity.py). Metrics against scikit-learn and a hand count; label parsing on hand
examples; a CLI fine-tune on a tiny BERT that lowers the loss, then ``jaxtl evaluate`` /
``jaxtl predict`` on the export and transformers on the same folder; bad input through the CLI.
Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import yaml
from helpers import make_tiny_checkpoint, make_tokenizer, read_metrics, write_csv
from sklearn import metrics as skm
from test_hf_parity import (
    FORWARD_TOL, TINY, assert_close, assert_grads_close, hf_grads, jax_grads_as_hf, randomize,
    tiny_batch, torch_inputs,
)

import jaxtl.hf
from jaxtl import cli, config as config_lib, families, heads, metrics, steps
from jaxtl.config import FinetuneDataConfig
from jaxtl.data.classification import load_classification_data, load_prediction_split
from jaxtl.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
LABELS = ("joy", "anger", "fear", "surprise")
MULTI_LABEL = "multi_label_classification"


# ---------------------------------------------------------------------------- parity with HF


def hf_model(family: str):
    id2label = dict(enumerate(LABELS))
    common = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()},
                  problem_type=MULTI_LABEL)
    if family == "bert":
        config = transformers.BertConfig(**TINY, hidden_act="gelu", layer_norm_eps=1e-7, **common)
        model = transformers.BertForSequenceClassification(config)
    elif family == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4,
                                               hidden_dim=48, max_position_embeddings=24, **common)
        model = transformers.DistilBertForSequenceClassification(config)
    else:
        config = transformers.RobertaConfig(**{**TINY, "max_position_embeddings": 40},
                                            hidden_act="gelu", layer_norm_eps=1e-7,
                                            pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
        model = transformers.RobertaForSequenceClassification(config)
    torch.manual_seed(0)
    return randomize(model, seed=4)


def family_batch(family: str) -> dict[str, np.ndarray]:
    batch = tiny_batch(2)  # 4 rows of 12, three padded with 0s
    if family == "distilbert":
        del batch["token_type_ids"]
    if family == "roberta":  # RoBERTa pads with 1 (its positions count from padding_idx + 1)
        batch["input_ids"] = np.where(batch["attention_mask"] == 1, batch["input_ids"], 1)
        batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
    return batch


# Row 3 has no label at all, row 0 three of them.
MULTI_HOT = np.array([[1, 1, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], np.float32)


@pytest.fixture(scope="module", params=["bert", "distilbert", "roberta"])
def case(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(f"ml-{family}")
    model = hf_model(family)
    model.save_pretrained(str(folder))
    return {"family": family, "folder": folder, "hf": model, "batch": family_batch(family)}


def test_logits_loss_and_grads_match_hf(case):
    family, batch, reference = case["family"], case["batch"], case["hf"]
    reference.zero_grad()
    ref = reference(**torch_inputs(batch), labels=torch.from_numpy(MULTI_HOT))
    ref.loss.backward()
    # HF's own loss for this problem_type, written out: BCE-with-logits, mean over B*C
    bce = torch.nn.functional.binary_cross_entropy_with_logits(ref.logits, torch.from_numpy(MULTI_HOT))
    assert abs(ref.loss.item() - bce.item()) < 1e-7

    model, params = jaxtl.hf.load(case["folder"], head="classification")
    assert model.config.labels == LABELS and heads.is_multi_label(model.config)
    task = heads.get("classification").task(model.config)
    assert task is steps.MULTI_LABEL_CLASSIFICATION
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    jbatch.setdefault("token_type_ids", jnp.zeros_like(jbatch["input_ids"]))
    jbatch["labels"] = jnp.asarray(MULTI_HOT)
    jbatch["example_weight"] = jnp.ones(len(MULTI_HOT), jnp.float32)

    def loss_fn(p):
        outputs = task.forward(model.apply, p, jbatch, deterministic=True)
        loss, sums = task.loss(outputs, jbatch)
        return loss, (outputs, sums)

    (loss, (outputs, sums)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    assert_close(outputs["logits"], ref.logits.detach().numpy(), FORWARD_TOL, f"{family} logits")
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{family} multi-label loss")
    assert float(sums["count"]) == 4.0
    assert_grads_close(jax_grads_as_hf(grads), hf_grads(reference), f"{family} multi-label grads")

    # A padding row (weight 0, labels anything) leaves the loss at HF's loss over the real rows.
    with torch.no_grad():
        ref3 = reference(**torch_inputs({k: v[:3] for k, v in batch.items()}),
                         labels=torch.from_numpy(MULTI_HOT[:3]))
    padded = dict(jbatch, example_weight=jnp.asarray([1.0, 1.0, 1.0, 0.0]),
                  labels=jnp.asarray(MULTI_HOT).at[3].set(1.0))
    loss3, _ = task.loss(task.forward(model.apply, params, padded, deterministic=True), padded)
    assert_close(loss3, ref3.loss.item(), FORWARD_TOL, f"{family} loss with a padding row")


def test_export_keeps_problem_type_for_transformers(case, tmp_path):
    """jaxtl's export is a folder whose transformers model computes the same BCE loss."""
    model, params = jaxtl.hf.load(case["folder"], head="classification")
    jaxtl.hf.save(model, params, tmp_path / "out")
    hf_config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf_config["problem_type"] == MULTI_LABEL
    assert hf_config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    with torch.no_grad():
        a = reloaded.eval()(**torch_inputs(case["batch"]), labels=torch.from_numpy(MULTI_HOT))
        b = case["hf"](**torch_inputs(case["batch"]), labels=torch.from_numpy(MULTI_HOT))
    assert_close(a.logits.numpy(), b.logits.numpy(), FORWARD_TOL, "exported logits")
    assert abs(a.loss.item() - b.loss.item()) < 1e-6


# ---------------------------------------------------------------------------- metrics


def test_metrics_on_a_hand_case():
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    # by hand: tp = 3 (r0 l0, r1 l1, r2 l0), fp = 1 (r2 l2), fn = 2 (r0 l2, r2 l1)
    # micro P = 3/4, R = 3/5, F1 = 2*3 / (2*3 + 1 + 2) = 2/3
    # per label F1: l0 2/2 pred, 2 gold, tp 2 -> 1; l1 tp 1 fp 0 fn 1 -> 2/3; l2 tp 0 -> 0
    # exact rows: r1 and r3 -> 1/2
    got = metrics.multi_label_metrics(gold, pred)
    assert got["micro_f1"] == pytest.approx(2 / 3)
    assert got["micro_precision"] == pytest.approx(3 / 4)
    assert got["micro_recall"] == pytest.approx(3 / 5)
    assert got["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert got["subset_accuracy"] == pytest.approx(0.5)
    assert got["micro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="micro"))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="macro", zero_division=0))
    assert got["subset_accuracy"] == pytest.approx(skm.accuracy_score(gold, pred))


def test_head_metrics_and_prediction_use_the_threshold():
    from jaxtl.families.bert import BertConfig

    config = BertConfig(labels=("a", "b", "c"), problem_type=MULTI_LABEL)
    logits = np.array([[2.0, -2.0, 0.1], [-1.0, 0.3, -3.0]])  # sigmoid: .88 .12 .52 / .27 .57 .05
    gold = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    spec = heads.get("classification")
    assert spec.best_metric(config) == "micro_f1"
    assert spec.metrics(config, gold, {"logits": logits})["subset_accuracy"] == 0.5  # c at .52
    assert spec.metrics(config, gold, {"logits": logits}, threshold=0.6)["subset_accuracy"] == 0.5
    assert spec.metrics(config, gold, {"logits": logits}, threshold=0.55)["subset_accuracy"] == 1.0
    row = spec.format_prediction(config, {"logits": logits[0]}, separator="|")
    assert row["predicted_labels"] == "a|c"
    assert row["prob_a"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert spec.format_prediction(config, {"logits": logits[1]}, threshold=0.6)["predicted_labels"] == ""


# ---------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("ml-tok"))


def data_config(**changes) -> FinetuneDataConfig:
    return FinetuneDataConfig(**{"multi_label": True, "text_column": "text",
                                 "label_column": "labels", "max_seq_length": 16, **changes})


def test_csv_cells_and_jsonl_lists(tmp_path, tokenizer):
    train = tmp_path / "train.csv"
    train.write_text('text,labels\nso good,"joy, surprise"\nbad day,anger\nthe plot,\n'
                     'it was a movie,joy,joy\n'.replace("joy,joy", '"joy,joy"'))
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "yes", "labels": ["anger", "joy"]}\n{"text": "no", "labels": []}\n')
    data = load_classification_data(data_config(train_file=str(train), validation_file=str(valid)),
                                    tokenizer, max_positions=64)
    assert data.labels == ("anger", "joy", "surprise") and data.multi_label
    np.testing.assert_array_equal(data.train.labels, [[0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    assert data.train.labels.dtype == np.float32
    np.testing.assert_array_equal(data.validation.labels, [[1, 1, 0], [0, 0, 0]])

    # another separator; the label order from data.labels
    tsv = tmp_path / "train.tsv"
    tsv.write_text("text\tlabels\nso good\tjoy|fear\nbad\tanger\n")
    data = load_classification_data(
        data_config(train_file=str(tsv), label_separator="|", labels=["fear", "joy", "anger"]),
        tokenizer, max_positions=64)
    np.testing.assert_array_equal(data.train.labels, [[1, 1, 0], [0, 0, 1]])

    # batches carry the multi-hot rows [b, C], zero on padding rows
    from jaxtl.data.batching import ClassificationBatcher

    batch = next(ClassificationBatcher(data.train, batch_size=4).eval_batches())
    assert batch["labels"].shape == (4, 3) and batch["labels"].dtype == np.float32
    assert batch["labels"][batch["index"] < 0].sum() == 0


def test_bad_labels_are_named(tmp_path, tokenizer):
    train = write_csv(tmp_path / "train.csv", ["text", "labels"], [["a", "joy"], ["b", "anger"]])
    valid = write_csv(tmp_path / "valid.csv", ["text", "labels"], [["a", "joy"], ["b", "joy,rage"]])
    with pytest.raises(DataError, match=r"valid\.csv, line 3: label 'rage' in column 'labels'"):
        load_classification_data(data_config(train_file=train, validation_file=valid), tokenizer,
                                 max_positions=64)
    with pytest.raises(DataError, match=r"valid\.csv, line 3: label 'rage'"):
        load_prediction_split(valid, data_config(), tokenizer, max_positions=64,
                              labels=("anger", "joy"))
    null = tmp_path / "null.jsonl"
    null.write_text('{"text": "a", "labels": ["joy"]}\n{"text": "b", "labels": null}\n')
    with pytest.raises(DataError, match=r"null\.jsonl, line 2: column 'labels' is missing"):
        load_classification_data(data_config(train_file=str(null)), tokenizer, max_positions=64)
    one = write_csv(tmp_path / "one.csv", ["text", "labels"], [["a", "joy"], ["b", ""]])
    with pytest.raises(DataError, match=r"needs at least 2"):
        load_classification_data(data_config(train_file=one), tokenizer, max_positions=64)
    # a list in a single-label run is refused, not read as the label "['joy']"
    lists = tmp_path / "lists.jsonl"
    lists.write_text('{"text": "a", "labels": ["joy"]}\n{"text": "b", "labels": ["anger"]}\n')
    with pytest.raises(DataError, match=r"lists\.jsonl, line 1: .*holds a list.*multi_label"):
        load_classification_data(data_config(train_file=str(lists), multi_label=False), tokenizer,
                                 max_positions=64)


def test_hf_dataset_lists_of_class_label_ids(tokenizer, monkeypatch):
    """go_emotions' shape: ``labels`` is a list of ClassLabel ids; names come from the feature."""
    import datasets

    from jaxtl.data import classification as cls_data

    features = datasets.Features({"text": datasets.Value("string"),
                                  "labels": datasets.List(datasets.ClassLabel(names=list(LABELS)))})
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(
            {"text": ["so good", "bad", "the plot"], "labels": [[0, 3], [1], []]}, features=features),
        "validation": datasets.Dataset.from_dict({"text": ["yes"], "labels": [[2]]},
                                                 features=features),
    })

    class Hub:
        def __init__(self, name, config, *, local_hint):
            self.name = name

        def has(self, split):
            return split in splits

        def split(self, split, what):
            return splits[split]

    monkeypatch.setattr(cls_data, "HubDataset", Hub)
    data = load_classification_data(data_config(dataset="go_emotions_like"), tokenizer,
                                    max_positions=64)
    assert data.labels == LABELS  # the feature's names in id order ("fear": validation only)
    np.testing.assert_array_equal(data.train.labels, [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(data.validation.labels, [[0, 0, 1, 0]])


@pytest.mark.parametrize("data, message", [
    ({"multi_label": True, "regression": True}, "data.multi_label: true and data.regression"),
    ({"multi_label": True, "packing": True}, "data.packing: true is not supported with data.multi_label"),
    ({"multi_label": True, "threshold": 1.0}, r"data.threshold=1.0 must be in \(0, 1\)"),
    ({"multi_label": True, "label_separator": ""}, "data.label_separator"),
    ({"threshold": 0.3}, "data.threshold=0.3 is only used with data.multi_label: true"),
    ({"label_separator": "|"}, "data.label_separator='|' is only used with data.multi_label"),
])
def test_config_combinations_are_refused(data, message):
    raw = {"task": "finetune", "model": {"pretrained": "x"}, "data": {"train_file": "t.csv", **data}}
    with pytest.raises(ConfigError, match=message):
        config_lib.from_dict(raw)


# ---------------------------------------------------------------------------- CLI end to end

KEYWORDS = {"praise": ["good", "great", "love"], "complaint": ["bad", "awful", "hate"],
            "royalty": ["king", "queen", "lord"]}
FILLER = "the a movie film story plot one time day night very really so".split()


def labelled_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(text, "label,label") rows: each label independently present with its keywords."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        present = [name for name in KEYWORDS if rng.random() < 0.5]
        words = list(rng.choice(FILLER, rng.integers(2, 6)))
        for name in present:
            words.append(str(rng.choice(KEYWORDS[name])))
        rng.shuffle(words)
        rows.append((" ".join(words), ",".join(present)))
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ml-cli")
    # 64 wide (helpers' default is 32): three labels to learn at once; measured 0.70 -> 0.24 loss
    # and validation micro-F1 0.94 in 120 steps (32 wide: stuck near 0.46 after as many).
    ckpt = make_tiny_checkpoint(root, tokenizer, cls=transformers.BertModel, hidden_size=64,
                                intermediate_size=128)
    rows = labelled_rows(240, seed=0)
    train = write_csv(root / "train.csv", ["text", "labels"], rows[:192])
    valid = write_csv(root / "valid.csv", ["text", "labels"], rows[192:])
    raw = {
        "task": "finetune",
        "model": {"pretrained": str(ckpt), "hidden_dropout_prob": 0.0,
                  "attention_probs_dropout_prob": 0.0},
        "data": {"train_file": train, "validation_file": valid, "text_column": "text",
                 "label_column": "labels", "multi_label": True, "max_seq_length": 16,
                 "bucket_sizes": [16]},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "epochs": 10, "log_every": 12, "seed": 0, "progress": False,
                  "tensorboard": False},
    }
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    workdir = root / "run"
    assert cli.main(["finetune", "--config", str(config), "--workdir", str(workdir)]) == 0
    return {"root": root, "workdir": workdir, "best": workdir / "best", "valid": valid,
            "valid_rows": rows[192:]}


def test_finetune_lowers_the_loss_and_exports_problem_type(trained):
    workdir = trained["workdir"]
    train_losses = [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]
    print("MULTILABEL train losses", [round(x, 3) for x in train_losses])
    assert train_losses[-1] < 0.5 * train_losses[0], train_losses
    results = json.loads((workdir / "eval_results.json").read_text())["validation"]
    print("MULTILABEL validation", results)
    assert results["micro_f1"] >= 0.8, results
    assert {"macro_f1", "subset_accuracy", "loss"} <= set(results)
    hf_config = json.loads((trained["best"] / "config.json").read_text())
    assert hf_config["problem_type"] == MULTI_LABEL
    assert hf_config["id2label"] == {"0": "complaint", "1": "praise", "2": "royalty"}


def test_evaluate_and_predict_on_the_export_agree_with_transformers(trained, tmp_path):
    best, valid = str(trained["best"]), trained["valid"]
    results = json.loads((trained["workdir"] / "eval_results.json").read_text())["validation"]
    out_json = tmp_path / "eval.json"
    # No --config: multi-label comes from config.json; the columns from --set.
    columns = ["--set", "data.text_column=text", "--set", "data.label_column=labels",
               "--set", "data.max_seq_length=16"]
    assert cli.main(["evaluate", "--model", best, "--file", valid, "--output", str(out_json),
                     *columns]) == 0
    evaluated = json.loads(out_json.read_text())
    assert evaluated["examples"] == 48
    for key in ("micro_f1", "macro_f1", "subset_accuracy"):
        assert evaluated[key] == pytest.approx(results[key], abs=1e-6), key

    # predict on texts only (no label column), with another separator in the output
    texts = write_csv(tmp_path / "new.csv", ["id", "text"],
                      [[i, text] for i, (text, _) in enumerate(trained["valid_rows"])])
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", "--model", best, "--file", texts, "--output", str(out),
                     "--set", "data.text_column=text", "--set", "data.label_separator=;",
                     "--set", "data.max_seq_length=16"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "text", "predicted_labels", "prob_complaint", "prob_praise",
                             "prob_royalty"]
    probs = np.array([[float(r[f"prob_{n}"]) for n in ("complaint", "praise", "royalty")]
                      for r in rows])
    for r, p in zip(rows, probs):
        chosen = [n for n, q in zip(("complaint", "praise", "royalty"), p) if q > 0.5]
        assert r["predicted_labels"] == ";".join(chosen)
    gold = [set(labels.split(",")) - {""} for _, labels in trained["valid_rows"]]
    predicted = [set(r["predicted_labels"].split(";")) - {""} for r in rows]
    exact = np.mean([g == p for g, p in zip(gold, predicted)])
    assert exact == pytest.approx(results["subset_accuracy"], abs=1e-6)

    # transformers on the same folder: HF's sigmoid probabilities, and its BCE loss
    model = transformers.AutoModelForSequenceClassification.from_pretrained(best).eval()
    tok = transformers.AutoTokenizer.from_pretrained(best)
    assert model.config.problem_type == MULTI_LABEL
    enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=16,
              return_tensors="pt")
    with torch.no_grad():
        hf_probs = torch.sigmoid(model(**enc).logits).numpy()
    print("MULTILABEL max |prob jaxtl - transformers|", np.abs(probs - hf_probs).max())
    np.testing.assert_allclose(probs, hf_probs, atol=1e-5)


def run_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "jaxtl.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_unknown_label_through_the_cli(trained, tmp_path):
    bad = write_csv(tmp_path / "bad.csv", ["text", "labels"],
                    [["so good", "praise"], ["the king", "royalty,queenly"]])
    proc = run_cli("evaluate", "--model", str(trained["best"]), "--file", bad,
                   "--set", "data.text_column=text", "--set", "data.label_column=labels",
                   "--set", "data.max_seq_length=16")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("jaxtl: error: ") and "bad.csv, line 3" in line and "'queenly'" in line, line


def test_multi_label_config_on_a_single_label_model_is_refused(trained, tmp_path, capsys):
    """The model decides: a config that says multi-label is refused on a single-label model."""
    model, params = jaxtl.hf.load(trained["best"], head="classification")
    single = jaxtl.hf.load_config(trained["best"], problem_type="single_label_classification")
    single_model = families.of_config(single).build(single, "classification")
    jaxtl.hf.save(single_model, params, tmp_path / "single", tokenizer=jaxtl.hf.tokenizer(trained["best"]))
    out = tmp_path / "p.csv"
    assert cli.main(["predict", "--model", str(tmp_path / "single"), "--file", trained["valid"],
                     "--output", str(out), "--set", "data.text_column=text",
                     "--set", "data.max_seq_length=16", "--set", "data.multi_label=true"]) == 2
    assert "data.multi_label is true but the model is a single-label" in capsys.readouterr().err
    assert not out.exists()
