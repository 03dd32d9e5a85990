"""End to end through the CLI on a tiny model: pretrain (MLM + NSP) on real text, export to
transformers, fine-tune the result, continue from an HF checkpoint, resume, LAMB, errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import torch
import transformers
import yaml
from helpers import (
    assert_same_final_weights,
    assert_same_metrics,
    make_tiny_checkpoint,
    make_tokenizer,
    read_metrics,
    run_with_signal,
    sentiment_rows,
    write_csv,
)

from jaxtl import checkpoint, cli, config as config_lib, hf, optim, steps, tasks, train


# Real English prose (public-domain openings and well-known passages), one document per
# paragraph block; documents are separated by blank lines, as BERT's pretraining data is.
CORPUS = """\
It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.
However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered the rightful property of some one or other of their daughters.
My dear Mr. Bennet, said his lady to him one day, have you heard that Netherfield Park is let at last?
Mr. Bennet replied that he had not.
But it is, returned she; for Mrs. Long has just been here, and she told me all about it.
Mr. Bennet made no answer.

It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.
It was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of Darkness.
There were a king with a large jaw and a queen with a plain face, on the throne of England.
There were a king with a large jaw and a queen with a fair face, on the throne of France.
In both countries it was clearer than crystal to the lords of the State preserves of loaves and fishes, that things in general were settled for ever.

Call me Ishmael.
Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.
It is a way I have of driving off the spleen and regulating the circulation.
Whenever I find myself growing grim about the mouth, I account it high time to get to sea as soon as I can.
This is my substitute for pistol and ball.
There is nothing surprising in this.

Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do.
Once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations in it.
And what is the use of a book, thought Alice, without pictures or conversations?
So she was considering in her own mind whether the pleasure of making a daisy chain would be worth the trouble of getting up and picking the daisies.
Suddenly a White Rabbit with pink eyes ran close by her.
There was nothing so very remarkable in that.

Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in Liberty, and dedicated to the proposition that all men are created equal.
Now we are engaged in a great civil war, testing whether that nation, or any nation so conceived and so dedicated, can long endure.
We are met on a great battle field of that war.
We have come to dedicate a portion of that field, as a final resting place for those who here gave their lives that that nation might live.
It is altogether fitting and proper that we should do this.

In the beginning God created the heaven and the earth.
And the earth was without form, and void; and darkness was upon the face of the deep.
And the Spirit of God moved upon the face of the waters.
And God said, Let there be light: and there was light.
And God saw the light, that it was good: and God divided the light from the darkness.
And God called the light Day, and the darkness he called Night.

Happy families are all alike; every unhappy family is unhappy in its own way.
Everything was in confusion in the Oblonskys' house.
The wife had discovered that the husband was carrying on an intrigue with a French girl, who had been a governess in their family.
She had announced to her husband that she could not go on living in the same house with him.
This position of affairs had now lasted three days.

The sun shone, having no alternative, on the nothing new.
Two roads diverged in a yellow wood, and sorry I could not travel both.
I wandered lonely as a cloud that floats on high over vales and hills.
When all at once I saw a crowd, a host, of golden daffodils.
Beside the lake, beneath the trees, fluttering and dancing in the breeze.
"""


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for this module only: its runs compile the same programs
    again (a stopped run and its resumption, one model's initialisation in every run), and on
    8 faked CPU devices compiling costs far more than the few training steps."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.set_cache_dir(str(tmp_path_factory.mktemp("jax-cache")))
    cc.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cc.reset_cache()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt")
    tok = make_tokenizer(root)
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return {"root": root, "tok": tok, "tok_dir": str(root / "tokenizer"), "corpus": str(corpus)}


def write_config(path: Path, assets, **sections) -> str:
    raw = {
        "task": "pretrain",
        "model": {"size": "tiny", "tokenizer": assets["tok_dir"],
                  "overrides": {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
                                "max_position_embeddings": 64}},
        "data": {"train_files": [assets["corpus"]], "max_seq_length": 64,
                 "validation_fraction": 0.25},
        "optim": {"lr": 5e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "max_steps": 40, "log_every": 10, "eval_every": 20, "seed": 0,
                  "progress": False, "tensorboard": False},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def scratch_run(assets, tmp_path_factory):
    """One CLI pretraining run from scratch, shared by the tests that inspect its outputs."""
    root = tmp_path_factory.mktemp("scratch")
    config = write_config(root / "c.yaml", assets, train={"tensorboard": True})
    workdir = root / "run"
    code = cli.main(["pretrain", "--config", config, "--workdir", str(workdir)])
    return {"code": code, "config": config, "workdir": workdir}


def test_pretrain_from_scratch_lowers_loss_and_records_metrics(scratch_run, assets):
    assert scratch_run["code"] == 0
    workdir = scratch_run["workdir"]
    records = read_metrics(workdir)
    train_records = [r for r in records if r["split"] == "train"]
    for key in ("mlm_loss", "mlm_accuracy", "perplexity", "nsp_loss", "nsp_accuracy", "loss", "lr"):
        assert all(key in r for r in train_records), key
    # Real text, tokenized mostly into characters: from ln(194) = 5.3 nats at initialisation the
    # masked-token loss falls towards the character entropy.
    mlm_losses = [r["mlm_loss"] for r in train_records]
    assert mlm_losses[-1] < mlm_losses[0] - 0.5, mlm_losses
    assert mlm_losses[-1] < 4.3, mlm_losses
    assert train_records[-1]["perplexity"] == pytest.approx(np.exp(mlm_losses[-1]), rel=1e-6)

    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [20, 40]
    last = validation[-1]
    for key in ("mlm_loss", "mlm_accuracy", "perplexity", "nsp_accuracy", "examples"):
        assert key in last, key
    # The floors to read the scores against are recorded with every validation result.
    assert 0.0 < last["unigram_baseline"] < 1.0 and 0.5 <= last["nsp_baseline"] <= 1.0, last
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]

    # final/ and best/ are HF BertForPreTraining folders with the tokenizer.
    for name in ("final", "best"):
        folder = workdir / name
        assert json.loads((folder / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
        assert transformers.AutoTokenizer.from_pretrained(folder).get_vocab() == assets["tok"].get_vocab()


def test_export_matches_transformers_on_the_same_batch(scratch_run):
    workdir = scratch_run["workdir"]
    cfg = config_lib.load(scratch_run["config"])
    setup = tasks.pretrain_setup(cfg)
    model = setup.model
    restored = checkpoint.Checkpointer(workdir / "checkpoints").restore_params(hf.abstract_params(model))
    params, step = restored
    assert step == 40
    batch = setup.train_batch(123)

    forward = jax.jit(lambda params, batch, positions: model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
        masked_positions=positions))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    outputs = forward(params, inputs, batch["masked_positions"])  # the vocab projection at P slots
    full = forward(params, inputs, None)  # ... and at every position, as HF computes it
    _, sums = steps.pretraining_loss(outputs, batch)

    hf_model = transformers.BertForPreTraining.from_pretrained(workdir / "final").eval()
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    rows, cols = np.nonzero(batch["masked_weights"])
    labels[rows, batch["masked_positions"][rows, cols]] = batch["masked_labels"][rows, cols]
    with torch.no_grad():
        hf_out = hf_model(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
            token_type_ids=torch.tensor(batch["token_type_ids"], dtype=torch.long),
            labels=torch.tensor(labels), next_sentence_label=torch.tensor(batch["nsp_labels"], dtype=torch.long),
        )
    hf_full = hf_out.prediction_logits.numpy()
    hf_masked = np.take_along_axis(hf_full, batch["masked_positions"][..., None].astype(np.int64), axis=1)
    np.testing.assert_allclose(np.asarray(outputs["mlm_logits"]), hf_masked, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(full["mlm_logits"]), hf_full, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(outputs["nsp_logits"]), hf_out.seq_relationship_logits.numpy(),
                               atol=1e-5, rtol=1e-5)
    # HF's loss (mean masked-token CE + mean NSP CE) is jaxtl's summarized loss.
    ours = steps.summarize(jax.device_get(sums))["loss"]
    assert ours == pytest.approx(float(hf_out.loss), rel=1e-5)


def test_finetune_starts_from_the_pretrained_export(scratch_run, assets, tmp_path, capsys):
    rows = sentiment_rows(96, seed=3)
    csv = write_csv(tmp_path / "train.csv", ["sentence", "label"], rows)
    raw = {
        "task": "finetune",
        "model": {"pretrained": str(scratch_run["workdir"] / "final")},
        "data": {"train_file": csv, "max_seq_length": 32, "bucket_sizes": [32]},
        "optim": {"lr": 3e-3},
        "train": {"batch_size": 16, "max_steps": 8, "log_every": 4, "progress": False,
                  "tensorboard": False},
    }
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert cli.main(["finetune", "--config", str(config), "--workdir", str(tmp_path / "ft")]) == 0
    log = capsys.readouterr().err
    new_line = next(line for line in log.splitlines() if "newly initialised" in line)
    assert "classifier.weight" in new_line and "bert." not in new_line, new_line
    losses = [r["loss"] for r in read_metrics(tmp_path / "ft") if r["split"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses
    hf_model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ft" / "final")
    assert hf_model.config.id2label == {0: "negative", 1: "positive"}


def test_continue_pretraining_from_an_hf_bert_model_mlm_only(assets, tmp_path, capsys):
    """A BertModel folder (no heads) continued with masked LM only (data.nsp: false): the trunk
    loads, both heads are newly initialised and named in the log, no NSP metrics are recorded."""
    ckpt = make_tiny_checkpoint(tmp_path, assets["tok"], cls=transformers.BertModel)
    # A tiny lr: after two steps the trunk is still (almost exactly) the checkpoint's.
    config = write_config(tmp_path / "c.yaml", assets,
                          model={"pretrained": str(ckpt), "size": None, "tokenizer": None,
                                 "overrides": {}},
                          data={"nsp": False, "validation_fraction": 0.0},
                          optim={"lr": 1e-9, "warmup_ratio": 0.0},
                          train={"max_steps": 2, "log_every": 1})
    workdir = tmp_path / "run"
    assert cli.main(["pretrain", "--config", config, "--workdir", str(workdir)]) == 0
    new_line = next(line for line in capsys.readouterr().err.splitlines() if "newly initialised" in line)
    for name in ("cls.predictions.bias", "cls.predictions.transform.dense.weight",
                 "cls.seq_relationship.weight"):
        assert name in new_line, new_line
    assert "bert.encoder" not in new_line

    from safetensors.numpy import load_file

    start = load_file(ckpt / "model.safetensors")
    end = load_file(workdir / "final" / "model.safetensors")
    for name, value in start.items():
        np.testing.assert_allclose(end["bert." + name], value, atol=1e-6, err_msg=name)
    assert "cls.seq_relationship.weight" in end  # an HF BertForPreTraining folder either way

    records = [r for r in read_metrics(workdir) if r["split"] != "compile"]
    assert [r["step"] for r in records] == [1, 2]  # no validation set: no step-0 evaluation
    assert all("mlm_accuracy" in r and "nsp_accuracy" not in r for r in records), records


def test_continued_pretraining_starts_at_the_checkpoints_own_numbers(scratch_run, assets, tmp_path):
    """Continuing from a BertForPreTraining export evaluates at step 0 (the default for
    `pretrain` from a checkpoint): the numbers equal the first run's last evaluation of the same
    weights on the same held-out instances, so both heads were kept, not re-initialised."""
    config = write_config(tmp_path / "c.yaml", assets,
                          model={"pretrained": str(scratch_run["workdir"] / "final"), "size": None,
                                 "tokenizer": None, "overrides": {}},
                          train={"max_steps": 2, "log_every": 1, "eval_every": 2})
    workdir = tmp_path / "run"
    assert cli.main(["pretrain", "--config", config, "--workdir", str(workdir)]) == 0
    records = read_metrics(workdir)
    first = [r for r in read_metrics(scratch_run["workdir"]) if r["split"] == "validation"][-1]
    start = records[0]
    assert (start["split"], start["step"]) == ("validation", 0), records
    for key in ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "examples"):
        assert start[key] == pytest.approx(first[key], rel=1e-5, abs=1e-6), key
    assert [(r["split"], r["step"]) for r in records[1:]] == [
        ("train", 1), ("train", 2), ("validation", 2), ("compile", 2)]
    compiled = records[-1]
    assert compiled["train_compilations"] == compiled["train_shapes"] == 1, compiled
    assert compiled["eval_compilations"] == compiled["eval_shapes"] >= 1, compiled

    # Switched off, the first line is the first update's.
    off_config = write_config(tmp_path / "off.yaml", assets,
                              model={"pretrained": str(scratch_run["workdir"] / "final"), "size": None,
                                     "tokenizer": None, "overrides": {}},
                              train={"max_steps": 1, "log_every": 1, "eval_at_start": False})
    assert cli.main(["pretrain", "--config", off_config, "--workdir", str(tmp_path / "off")]) == 0
    assert read_metrics(tmp_path / "off")[0]["split"] == "train"


def test_lamb_moves_each_weight_matrix_by_lr_times_its_norm():
    """optim.name=lamb is LAMB: Adam's step rescaled per parameter by the trust ratio
    ||w|| / ||step||, so every (nonzero) weight moves by exactly lr x its norm on any step."""
    rng = np.random.default_rng(0)
    params = {"bert": {"encoder": {"layer": {"0": {"attention": {"self": {"query": {
        "kernel": rng.normal(0, 0.02, (16, 16)), "bias": np.zeros(16)}}}}}}},
        "cls": {"predictions": {"bias": np.zeros(40)}}}
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    cfg = config_lib.OptimConfig(name="lamb", lr=1e-2, warmup_steps=0, schedule="constant")
    tx, _ = optim.make_optimizer(cfg, params, total_steps=10, num_layers=1)
    opt_state = tx.init(params)
    for _ in range(3):
        grads = jax.tree.map(lambda x: np.asarray(rng.normal(size=x.shape), np.float32), params)
        updates, opt_state = tx.update(grads, opt_state, params)
        kernel = params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
        step = updates["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
        assert np.linalg.norm(step) == pytest.approx(1e-2 * np.linalg.norm(kernel), rel=1e-4)
        params = optax.apply_updates(params, updates)


def test_lamb_run_stopped_by_sigterm_resumes_bitwise_identical(assets, tmp_path):
    # With LAMB, whose state (Adam moments) must survive the round trip too.
    config = write_config(tmp_path / "c.yaml", assets, data={"validation_fraction": 0.0},
                          optim={"name": "lamb", "lr": 2e-2, "warmup_steps": 2},
                          train={"max_steps": 12, "save_every": 4, "log_every": 3})
    cfg = config_lib.load(config)
    straight = tmp_path / "straight"
    run_with_signal(cfg, straight, at_step=None)

    resumed = tmp_path / "resumed"
    with pytest.raises(train.Stopped) as stopped:
        run_with_signal(cfg, resumed, at_step=5)
    assert stopped.value.step == 6  # step 6 finishes, is checkpointed, and the run stops
    run_with_signal(cfg, resumed, at_step=None)

    assert_same_final_weights(straight, resumed)
    assert_same_metrics(straight, resumed)
    # A few LAMB steps lower the loss (the mean over each 3-step window, fresh batches each step).
    losses = [r["loss"] for r in read_metrics(straight) if r["split"] == "train"]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "empty.txt: no text (the corpus is empty)"),
        ("one_sentence", "one.txt: the whole corpus is one sentence"),
        ("vocab", "194 tokens but the model's vocab_size is 50"),
        ("missing", "missing.txt does not exist"),
    ],
)
def test_bad_input_is_one_clear_error(assets, tmp_path, capsys, case, message):
    overrides = []
    if case == "empty":
        (tmp_path / "empty.txt").write_text("\n\n  \n")
        overrides = [f"data.train_files=[{tmp_path / 'empty.txt'}]"]
    elif case == "one_sentence":
        (tmp_path / "one.txt").write_text("Call me Ishmael.\n")
        overrides = [f"data.train_files=[{tmp_path / 'one.txt'}]"]
    elif case == "vocab":
        overrides = ["model.overrides={vocab_size: 50}"]
    else:
        overrides = [f"data.train_files=[{tmp_path / 'missing.txt'}]"]
    config = write_config(tmp_path / "c.yaml", assets)
    argv = ["pretrain", "--config", config, "--workdir", str(tmp_path / "w")]
    code = cli.main(argv + [arg for o in overrides for arg in ("--set", o)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "jaxtl: error:" in err and message in err, err
    assert "Traceback" not in err
    assert err.count("jaxtl: error:") == 1
