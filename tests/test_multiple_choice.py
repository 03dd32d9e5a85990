"""Multiple choice (SWAG-style) on every family, against Hugging Face PyTorch ``*ForMultipleChoice``.

Parity: random tiny models (2 layers, hidden 32, unit-scale weights as test_hf_parity.randomize)
of BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ALBERT, DistilBERT and ELECTRA (two sequence-summary
settings) on padded ``[B, C, L]`` batches: logits within 1e-5, the loss with labels equal to HF's,
every weight's gradient within 1e-4 relative (test_hf_parity's tolerances), and export ->
``AutoModelForMultipleChoice`` -> the same logits. Then the data (hand-checked encodings,
truncation, list columns, bad rows), and the CLI end to end: `jaxtl finetune` lowers the loss,
`jaxtl evaluate` / `jaxtl predict` on best/, `transformers` on the export gives predict's
probabilities, and bad input is one DataError line (exit 2, no traceback).
Run with ``-s`` to see the measured differences (``PARITY`` lines).
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
from helpers import (
    NEGATIVE, NEUTRAL_WORDS, POSITIVE, make_tiny_checkpoint, make_tokenizer, read_metrics, write_csv,
)
from test_hf_parity import FORWARD_TOL, assert_close, assert_grads_close, hf_grads, jax_grads_as_hf

import jaxtl.hf
from jaxtl import cli, families, heads, steps
from jaxtl.config import MultipleChoiceDataConfig
from jaxtl.data import multiple_choice as mc_data
from jaxtl.errors import DataError

REPO = Path(__file__).resolve().parents[1]
LAYERS = dict(num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=24)
BERTLIKE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, **LAYERS)

# case -> (HF class prefix, config class, config fields, special ids: cls/bos, sep/eos, pad).
# Each differs from its family's defaults where jaxtl must follow: activation, LayerNorm
# epsilon, token types, pad id (RoBERTa positions), E != D (ALBERT, ELECTRA), the sequence summary.
CASES = {
    "bert": ("Bert", transformers.BertConfig,
             dict(BERTLIKE, hidden_act="gelu", layer_norm_eps=1e-7, type_vocab_size=3), (2, 3, 0)),
    "roberta": ("Roberta", transformers.RobertaConfig,
                dict(BERTLIKE, hidden_act="gelu", layer_norm_eps=1e-5, type_vocab_size=1,
                     pad_token_id=1), (0, 2, 1)),
    "xlm-roberta": ("XLMRoberta", transformers.XLMRobertaConfig,
                    dict(BERTLIKE, hidden_act="relu", layer_norm_eps=1e-3, type_vocab_size=2,
                         pad_token_id=1), (0, 2, 1)),
    "camembert": ("Camembert", transformers.CamembertConfig,
                  dict(BERTLIKE, hidden_act="gelu_new", type_vocab_size=1, pad_token_id=0,
                       bos_token_id=5, eos_token_id=6), (5, 6, 0)),
    "albert": ("Albert", transformers.AlbertConfig,
               dict(BERTLIKE, embedding_size=16, hidden_act="gelu_new", num_hidden_groups=1,
                    classifier_dropout_prob=0.1), (2, 3, 0)),
    "distilbert": ("DistilBert", transformers.DistilBertConfig,
                   dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                        max_position_embeddings=24, activation="gelu"), (2, 3, 0)),
    "electra": ("Electra", transformers.ElectraConfig,
                dict(BERTLIKE, embedding_size=24, hidden_act="gelu", layer_norm_eps=1e-7),
                (2, 3, 0)),
    "electra-mean": ("Electra", transformers.ElectraConfig,
                     dict(BERTLIKE, embedding_size=32, summary_type="mean", summary_use_proj=False,
                          summary_activation="tanh"), (2, 3, 0)),
}


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Unit-scale random weights (as test_hf_parity.randomize; every family's LayerNorm names)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            elif "embeddings" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return model.eval()


def choice_batch(case: str, seed: int = 0) -> dict[str, np.ndarray]:
    """B=2 examples of C=3 choices, L=11: choices of different lengths (padded), pairs with
    segment ids where the family has token types."""
    _, _, fields, (cls_id, sep_id, pad_id) = CASES[case]
    rng = np.random.RandomState(seed)
    B, C, L = 2, 3, 11
    lengths = np.array([[11, 8, 6], [5, 11, 9]])
    first = np.array([[4, 3, 2], [2, 5, 4]])  # tokens of the context before its [SEP]
    mask = (np.arange(L) < lengths[..., None]).astype(np.int64)
    ids = rng.randint(7, 64, (B, C, L))
    ids[..., 0] = cls_id
    types = np.zeros((B, C, L), np.int64)
    for b in range(B):
        for c in range(C):
            ids[b, c, first[b, c] + 1] = sep_id
            ids[b, c, lengths[b, c] - 1] = sep_id
            if fields.get("type_vocab_size", 2) > 1:
                types[b, c, first[b, c] + 2: lengths[b, c]] = 1
    batch = {"input_ids": np.where(mask == 1, ids, pad_id), "attention_mask": mask,
             "token_type_ids": types}
    if case == "distilbert":
        del batch["token_type_ids"]  # HF's DistilBERT takes none
    return batch


def torch_inputs(batch):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def jax_batch(batch):
    out = {k: jnp.asarray(v) for k, v in batch.items()}
    out.setdefault("token_type_ids", jnp.zeros_like(out["input_ids"]))
    return out


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    name = request.param
    prefix, config_cls, fields, _ = CASES[name]
    torch.manual_seed(0)
    model = getattr(transformers, prefix + "ForMultipleChoice")(config_cls(**fields))
    model = randomize(model, seed=3)
    folder = tmp_path_factory.mktemp(f"mc-{name}")
    model.save_pretrained(str(folder))
    return {"name": name, "prefix": prefix, "folder": folder, "hf": model, "batch": choice_batch(name)}


def test_logits_loss_and_grads_match_hf(case):
    batch, reference = case["batch"], case["hf"]
    labels = np.array([2, 0])
    reference.zero_grad()
    ref = reference(**torch_inputs(batch), labels=torch.from_numpy(labels))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["folder"], head="multiple_choice")
    assert families.head_of(model) == "multiple_choice"
    jbatch = jax_batch(batch)
    jbatch["labels"] = jnp.asarray(labels)
    jbatch["example_weight"] = jnp.ones(len(labels), jnp.float32)
    task = heads.get("multiple_choice").task(model.config)

    def loss_fn(p):
        outputs = task.forward(model.apply, p, jbatch, deterministic=True)
        loss, metrics = task.loss(outputs, jbatch)
        return loss, (outputs, metrics)

    (loss, (outputs, metrics)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    name = case["name"]
    assert outputs["logits"].shape == (2, 3)
    assert_close(outputs["logits"], ref.logits.detach().numpy(), FORWARD_TOL, f"{name} choice logits")
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{name} choice loss")
    assert float(metrics["correct"]) == float((ref.logits.argmax(-1).numpy() == labels).sum())
    jax_grads, torch_grads = jax_grads_as_hf(grads), hf_grads(reference)
    # The mean summary reads padding positions: the padding row of the word embeddings gets no
    # gradient from them in either (HF's padding_idx; jaxtl's families.layers.lookup).
    assert_grads_close(jax_grads, torch_grads, f"{name} choice grads")


def test_export_loads_in_transformers_with_the_same_logits(case, tmp_path):
    model, params = jaxtl.hf.load(case["folder"], head="multiple_choice")
    out = jaxtl.hf.save(model, params, tmp_path / "export")
    reloaded = transformers.AutoModelForMultipleChoice.from_pretrained(str(out)).eval()
    assert type(reloaded).__name__ == f"{case['prefix']}ForMultipleChoice"
    inputs = torch_inputs(case["batch"])
    with torch.no_grad():
        exported = reloaded(**inputs).logits.numpy()
        original = case["hf"](**inputs).logits.numpy()
    assert_close(exported, original, FORWARD_TOL, f"{case['name']} exported choice logits")
    assert jaxtl.hf.head_of_folder(out) == "multiple_choice"


def test_dropout_before_the_classifier_follows_hf(case):
    """HF drops before `classifier` with classifier_dropout on BERT and ALBERT, seq_classif_dropout
    on DistilBERT (jaxtl classifier_dropout), hidden_dropout_prob on RoBERTa (classifier_dropout
    ignored) and summary_last_dropout on ELECTRA (classifier_dropout ignored)."""
    family = case["prefix"]
    quiet = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.9)
    if family == "Electra":
        quiet["summary_last_dropout"] = 0.0
    model, params = jaxtl.hf.load(case["folder"], head="multiple_choice", **quiet)
    batch = jax_batch(case["batch"])
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    exact = model.apply({"params": params}, *args, deterministic=True)["logits"]
    noisy = model.apply({"params": params}, *args, deterministic=False,
                        rngs={"dropout": jax.random.key(0)})["logits"]
    dropped = family in ("Bert", "Albert", "DistilBert")
    assert (not np.allclose(exact, noisy, atol=1e-6)) == dropped


def test_electra_summary_settings_jaxtl_cannot_compute_are_refused():
    from jaxtl.errors import ConfigError
    from jaxtl.families.electra import ElectraConfig

    with pytest.raises(ConfigError, match="summary_type='attn' is not supported"):
        ElectraConfig.from_hf({"summary_type": "attn"})
    with pytest.raises(ConfigError, match="summary_activation='softsign' is not supported"):
        ElectraConfig.from_hf({"summary_activation": "softsign"})


def test_padding_rows_do_not_count():
    """A zero-weight row leaves the loss and the sums as the real rows alone give them."""
    logits = jnp.asarray([[0.1, 2.0, -1.0], [1.0, 0.0, 0.5], [3.0, 3.0, 3.0]])
    full = {"labels": jnp.asarray([1, 2, 0]), "example_weight": jnp.asarray([1.0, 1.0, 0.0])}
    loss, sums = steps.multiple_choice_loss(logits, full)
    two, sums_two = steps.multiple_choice_loss(logits[:2], {"labels": full["labels"][:2],
                                                             "example_weight": jnp.ones(2)})
    expected = -np.mean([jax.nn.log_softmax(logits[0])[1], jax.nn.log_softmax(logits[1])[2]])
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss) == pytest.approx(float(two), rel=1e-6)
    assert float(sums["count"]) == 2.0 and float(sums["correct"]) == 1.0
    summary = steps.summarize(jax.device_get(sums))
    assert summary["accuracy"] == 0.5 and summary["loss"] == pytest.approx(float(expected), rel=1e-6)


# ---------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("mc-tok"))


def data_cfg(**changes) -> MultipleChoiceDataConfig:
    fields = dict(train_file="unused.csv", context_column="context", question_column="start",
                  choice_columns=["ending0", "ending1", "ending2"], max_seq_length=16)
    return MultipleChoiceDataConfig(**{**fields, **changes})


HEADER = ["context", "start", "ending0", "ending1", "ending2", "label"]


def tokens(tok, ids, length) -> list[str]:
    return tok.convert_ids_to_tokens([int(i) for i in ids[:length]])


def test_pairs_are_context_then_question_and_choice(tok, tmp_path):
    path = write_csv(tmp_path / "a.csv", HEADER, [
        ("the man", "he", "was good", "was bad", "yes", "0"),
        ("a woman", "", "is fun", "is boring too", "no", "2"),  # no question on this row
    ])
    split = mc_data.load_prediction_split(path, data_cfg(), tok, max_positions=64)
    assert split.num_choices == 3 and split.labels.tolist() == [0, 2]
    ids, types, lengths = split.input_ids[0], split.token_type_ids[0], split.choice_lengths[0]
    assert ids.shape == (3, 8) and lengths.tolist() == [8, 8, 7]
    assert tokens(tok, ids[0], 8) == ["[CLS]", "the", "man", "[SEP]", "he", "was", "good", "[SEP]"]
    assert types[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert tokens(tok, ids[2], 7) == ["[CLS]", "the", "man", "[SEP]", "he", "yes", "[SEP]"]
    assert ids[2, 7] == tok.pad_token_id  # the shorter choice is padded
    assert tokens(tok, split.input_ids[1][1], 8) == ["[CLS]", "a", "woman", "[SEP]", "is", "boring",
                                                    "too", "[SEP]"]


def test_long_contexts_are_cut_first_and_choices_stay_whole(tok, tmp_path):
    context = "the man and the woman and the king"  # 8 tokens
    path = write_csv(tmp_path / "a.csv", HEADER, [(context, "he", "was very good", "no", "yes", "1")])
    split = mc_data.load_prediction_split(path, data_cfg(max_seq_length=10), tok, max_positions=64)
    first = split.input_ids[0][0]
    assert tokens(tok, first, 10) == ["[CLS]", "the", "man", "and", "[SEP]", "he", "was", "very",
                                      "good", "[SEP]"]
    # question + choice alone leave no room (4 + 3 specials >= 6): both sides are cut
    split = mc_data.load_prediction_split(path, data_cfg(max_seq_length=6), tok, max_positions=64)
    assert split.choice_lengths[0].max() <= 6 and split.input_ids[0].shape[1] <= 6
    assert tokens(tok, split.input_ids[0][0], 6).count("[SEP]") == 2


def test_a_column_of_lists_jsonl_and_csv(tok, tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"context": "the day", "choices": ["was good", "was bad"], "label": 1})
                     + "\n" + json.dumps({"context": "the night", "choices": ["fun", "boring"]}) + "\n")
    cfg = data_cfg(question_column=None, choice_columns=None, choices_column="choices")
    with pytest.raises(DataError, match=r"a.jsonl, line 2: column 'label' holds None"):
        mc_data.load_prediction_split(str(jsonl), cfg, tok, max_positions=64)
    path = write_csv(tmp_path / "a.csv", ["context", "choices", "label"],
                     [("the day", '["was good", "was bad"]', "1"),
                      ("the night", '["fun", "boring"]', "0")])
    split = mc_data.load_prediction_split(path, cfg, tok, max_positions=64)
    assert split.num_choices == 2 and split.labels.tolist() == [1, 0]
    assert tokens(tok, split.input_ids[1][1], 5) == ["[CLS]", "the", "night", "[SEP]", "boring"]
    ragged = write_csv(tmp_path / "b.csv", ["context", "choices"],
                       [("the day", '["a", "b"]'), ("the night", '["a", "b", "the"]')])
    says = r"b.csv, line 3: column 'choices' holds 3 choices but .*line 2 holds 2"
    with pytest.raises(DataError, match=says):
        mc_data.load_prediction_split(ragged, cfg, tok, max_positions=64)


BAD_ROWS = [
    # (rows, config changes, what the message says)
    ([("the man", "he", "ran", "sat", "was", "3")], {},
     "line 2: label 3 in column 'label' is not a choice index"),
    ([("the man", "he", "ran", "", "was", "0")], {}, "line 2: choice 1 in column 'ending1' is empty"),
    ([("the man", "he", "ran", "sat", "was", "0")], {"choice_columns": ["ending0", "ending3"]},
     "no column 'ending3' (data.choice_columns)"),
    ([("the man", "he", "ran", "sat", "was", "first")], {}, "line 2: column 'label' holds 'first'"),
]


@pytest.mark.parametrize("rows, changes, says", BAD_ROWS, ids=["label", "missing", "column", "text"])
def test_bad_rows_are_one_data_error(tok, tmp_path, rows, changes, says):
    path = write_csv(tmp_path / "bad.csv", HEADER, rows)
    with pytest.raises(DataError) as error:
        mc_data.load_prediction_split(path, data_cfg(**changes), tok, max_positions=64)
    assert str(path) in str(error.value) and says in str(error.value), str(error.value)


def test_batches_are_examples_by_choices_by_positions(tok, tmp_path):
    path = write_csv(tmp_path / "a.csv", HEADER, [
        ("the man", "he", "was good", "yes", "no", "0"),
        ("the woman and the king", "they", "yes", "no", "was", "1"),
        ("a day", "", "fun", "boring", "good", "2"),
    ])
    split = mc_data.load_prediction_split(path, data_cfg(), tok, max_positions=64)
    batcher = mc_data.MultipleChoiceBatcher(split, batch_size=2, bucket_sizes=[8, 12])
    batches = list(batcher.eval_batches())
    assert [b["input_ids"].shape for b in batches] == [(2, 3, 8), (2, 3, 12)]
    last = batches[1]
    assert last["index"].tolist() == [1, -1] and last["example_weight"].tolist() == [1.0, 0.0]
    assert last["attention_mask"][1].tolist() == [[1] + [0] * 11] * 3  # a padding row
    real = last["attention_mask"][0].sum(-1)
    assert real.tolist() == split.choice_lengths[1].tolist() and last["labels"][0] == 1
    width = split.input_ids[1].shape[1]
    np.testing.assert_array_equal(last["input_ids"][0][:, :width], split.input_ids[1])


# ---------------------------------------------------------------------------- CLI end to end

CLI_HEADER = ["id", "context", "start", "ending0", "ending1", "ending2", "label"]


def choice_rows(n: int, seed: int) -> list[tuple]:
    """SWAG-shaped rows a tiny model learns: the right ending holds a positive word, the other
    two a negative one."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(3))
        endings = [" ".join([*rng.choice(NEUTRAL_WORDS, 2),
                             rng.choice(POSITIVE if k == label else NEGATIVE)]) for k in range(3)]
        context = " ".join(rng.choice(NEUTRAL_WORDS, int(rng.integers(2, 7))))
        rows.append((f"ex{i}", context, str(rng.choice(["he", "she", "they"])), *endings, label))
    return rows


@pytest.fixture(scope="module")
def cli_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc-cli")
    tok = make_tokenizer(root)
    ckpt = make_tiny_checkpoint(root, tok, cls=transformers.BertModel)
    rows = choice_rows(200, seed=1)
    return {"root": root, "ckpt": ckpt, "valid_rows": rows[160:],
            "train": write_csv(root / "train.csv", CLI_HEADER, rows[:160]),
            "valid": write_csv(root / "valid.csv", CLI_HEADER, rows[160:])}


def write_config(path: Path, assets, **data) -> str:
    raw = {
        "task": "multiple_choice",
        "model": {"pretrained": str(assets["ckpt"])},
        "data": {"train_file": assets["train"], "validation_file": assets["valid"],
                 "context_column": "context", "question_column": "start",
                 "choice_columns": ["ending0", "ending1", "ending2"], "max_seq_length": 24,
                 "bucket_sizes": [16, 24], **data},
        "optim": {"lr": 5e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "epochs": 6, "log_every": 10, "seed": 0, "progress": False,
                  "tensorboard": False},
    }
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_finetune_evaluate_predict_and_transformers_agree(cli_assets, tmp_path):
    config = write_config(tmp_path / "c.yaml", cli_assets)
    workdir = tmp_path / "run"
    assert cli.main(["finetune", "--config", config, "--workdir", str(workdir)]) == 0
    train_losses = [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0], train_losses
    results = json.loads((workdir / "eval_results.json").read_text())["validation"]
    assert results["accuracy"] >= 0.8, results

    best = workdir / "best"
    assert json.loads((best / "config.json").read_text())["architectures"] == ["BertForMultipleChoice"]
    out_json = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--model", str(best), "--file", cli_assets["valid"], "--config", config,
                     "--output", str(out_json)]) == 0
    evaluated = json.loads(out_json.read_text())
    assert evaluated["examples"] == 40
    assert evaluated["accuracy"] == pytest.approx(results["accuracy"], abs=1e-6)

    out_csv = tmp_path / "pred.csv"
    assert cli.main(["predict", "--model", str(best), "--file", cli_assets["valid"], "--config", config,
                     "--output", str(out_csv)]) == 0
    with out_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CLI_HEADER + ["predicted_choice", "prob_0", "prob_1", "prob_2"]
    assert [r["id"] for r in rows] == [r[0] for r in cli_assets["valid_rows"]]
    correct = [int(r["predicted_choice"]) == int(r["label"]) for r in rows]
    assert np.mean(correct) == pytest.approx(results["accuracy"], abs=1e-6)

    # transformers on the export, tokenizing the pairs itself, gives predict's probabilities
    model = transformers.AutoModelForMultipleChoice.from_pretrained(str(best)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(best))
    for row in rows:
        endings = [row[f"ending{k}"] for k in range(3)]
        encoded = tokenizer([row["context"]] * 3, [f"{row['start']} {e}" for e in endings],
                            padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v[None] for k, v in encoded.items()}).logits[0]
        probs = torch.softmax(logits.double(), -1).numpy()
        np.testing.assert_allclose([float(row[f"prob_{k}"]) for k in range(3)], probs, atol=1e-5)
        assert int(row["predicted_choice"]) == int(probs.argmax())


# Through the CLI as a subprocess (exit code, one line, no traceback); test_bad_rows_are_one_data_error
# checks the other bad rows' messages in-process (a subprocess costs ~10 s of imports).
BAD_FILES = [
    # (name, rows, config changes, what the message says)
    ("label.csv", [("x", "the man", "he", "a", "b", "the", "3")], {},
     "line 2: label 3 in column 'label' is not a choice index"),
]


@pytest.mark.parametrize("name, rows, changes, says", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_input_is_one_data_error_line(cli_assets, tmp_path, name, rows, changes, says):
    bad = write_csv(tmp_path / name, CLI_HEADER, rows)
    config = write_config(tmp_path / "bad.yaml", cli_assets, validation_file=bad, **changes)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "jaxtl.cli", "finetune", "--config", config,
                           "--workdir", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "jaxtl: error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert bad in errors[0] and says in errors[0], errors[0]
