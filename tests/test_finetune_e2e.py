"""End to end through the CLI on a tiny model: train, evaluate, export, predict, resume, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
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

from jaxtl import cli, config as config_lib, train


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    tok = make_tokenizer(root)
    ckpt = make_tiny_checkpoint(root, tok, cls=transformers.BertModel)
    rows = sentiment_rows(240, seed=1)
    train_csv = write_csv(root / "train.csv", ["sentence", "label"], rows[:192])
    valid_csv = write_csv(root / "valid.csv", ["sentence", "label"], rows[192:])
    return {"root": root, "tok": tok, "ckpt": ckpt, "train": train_csv, "valid": valid_csv}


def write_config(path: Path, assets, **sections) -> str:
    raw = {
        "task": "finetune",
        "model": {"pretrained": str(assets["ckpt"])},
        "data": {"train_file": assets["train"], "validation_file": assets["valid"],
                 "max_seq_length": 32, "bucket_sizes": [16, 32]},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "epochs": 4, "log_every": 4, "eval_every": 12, "seed": 0,
                  "progress": False, "tensorboard": True},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_finetune_cli_trains_exports_and_predicts(assets, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", assets)
    workdir = tmp_path / "run"
    assert cli.main(["finetune", "--config", config, "--workdir", str(workdir)]) == 0

    records = read_metrics(workdir)
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    # It learns. How far in 4 epochs depends on the seed and the dropout stream (seeds 0-4 end
    # at 0.36, 0.63, 0.68, 0.69, 0.48 with jaxtl's masks; 0.27, 0.61, 0.66, 0.69, 0.36 with
    # jax.random.bernoulli's): seed 0 learns with either.
    assert train_losses[-1] < 0.6 * train_losses[0], train_losses
    mfus = [r["mfu"] for r in records if r["split"] == "train"]
    assert all(0.0 < m < 1.0 for m in mfus), mfus  # logged at every log step, a sane fraction
    # One compilation per batch shape, at most one shape per bucket (16, 32): nothing retraces.
    compiled = records[-1]
    assert compiled["split"] == "compile", compiled
    assert 1 <= compiled["train_compilations"] == compiled["train_shapes"] <= 2, compiled
    assert 1 <= compiled["eval_compilations"] == compiled["eval_shapes"] <= 2, compiled
    assert records[0]["split"] == "train"  # fine-tuning: no evaluation at step 0 by default
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["validation"]["accuracy"] >= 0.9, results
    assert results["validation"]["examples"] == 48  # every example once, padding excluded
    assert list((workdir / "tb").glob("events.out.tfevents.*"))

    # The best export loads in transformers with the label names, and predicts what jaxtl does.
    best = workdir / "best"
    hf_model = transformers.BertForSequenceClassification.from_pretrained(best).eval()
    assert hf_model.config.id2label == {0: "negative", 1: "positive"}
    out_csv = tmp_path / "pred.csv"
    assert cli.main(["predict", "--model", str(best), "--file", assets["valid"], "--config", config,
                     "--output", str(out_csv)]) == 0
    import csv

    predicted_rows = list(csv.DictReader(out_csv.open()))
    assert list(predicted_rows[0])[:2] == ["sentence", "label"]  # the input's columns, kept
    predicted = [row["predicted_label"] for row in predicted_rows]
    tok = transformers.AutoTokenizer.from_pretrained(best)
    texts = [text for text, _ in sentiment_rows(240, seed=1)[192:]]
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        hf_ids = hf_model(**enc).logits.argmax(-1).tolist()
    assert predicted == [hf_model.config.id2label[i] for i in hf_ids]

    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(best), "--file", assets["valid"], "--config", config]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # The exported best model, evaluated on the validation file, scores what training recorded.
    assert evaluated["accuracy"] == pytest.approx(results["best"]["value"])
    assert evaluated["examples"] == 48


def test_sigterm_then_resume_is_bitwise_identical(assets, tmp_path):
    config = write_config(tmp_path / "c.yaml", assets, train={"save_every": 5, "eval_every": 10,
                                                               "epochs": 2, "tensorboard": False})
    cfg = config_lib.load(config)
    straight = tmp_path / "straight"
    run_with_signal(cfg, straight, at_step=None)

    resumed = tmp_path / "resumed"
    with pytest.raises(train.Stopped) as stopped:
        run_with_signal(cfg, resumed, at_step=7)
    # The signal arrives while step 7 is fetched: step 8 finishes, is checkpointed, and we stop.
    assert stopped.value.step == 8
    run_with_signal(cfg, resumed, at_step=None)

    assert_same_final_weights(straight, resumed)
    assert_same_metrics(straight, resumed)


def test_corrupt_latest_checkpoint_falls_back(assets, tmp_path, caplog):
    config = write_config(tmp_path / "c.yaml", assets, train={"save_every": 4, "max_steps": 8,
                                                               "eval_every": 100, "tensorboard": False})
    cfg = config_lib.load(config)
    workdir = tmp_path / "run"
    with pytest.raises(train.Stopped):
        run_with_signal(cfg, workdir, at_step=6)  # checkpoints at 4 and 7 (the stop)
    ckpts = workdir / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [4, 7]
    for f in (ckpts / "7" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 7)  # truncate every data file of the newest checkpoint
    caplog.set_level("WARNING", logger="jaxtl")
    run_with_signal(cfg, workdir, at_step=None)
    assert "checkpoints/7 is corrupt" in caplog.text, caplog.text  # the bad step, named
    assert "resumed from step 4" in caplog.text, caplog.text  # the step it fell back to
    assert json.loads((workdir / "eval_results.json").read_text())["step"] == 8


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1e-3", "optim.lrr"),
        ("data.label_column=polarity", "polarity"),
        ("data.max_seq_length=100", "max_position_embeddings"),
        ("train.batch_size=0", "train.batch_size"),
        ("optim.freeze=[layers:9]", "layers:9"),
        ("mesh.tensor=3", "mesh"),
    ],
)
def test_bad_input_is_one_clear_error(assets, tmp_path, capsys, override, message):
    config = write_config(tmp_path / "c.yaml", assets)
    code = cli.main(["finetune", "--config", config, "--workdir", str(tmp_path / "w"), "--set", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "jaxtl: error:" in err and message in err
    assert "Traceback" not in err


def test_nan_stops_the_run_without_checkpointing_it(assets, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", assets, optim={"lr": 1e30, "max_grad_norm": None},
                          train={"save_every": 4, "log_every": 4, "max_steps": 40})
    code = cli.main(["finetune", "--config", config, "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "non-finite" in err
    ckpts = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
    import re

    failing_step = int(re.search(r"non-finite .* by step (\d+);", err).group(1))
    assert all(step < failing_step for step in ckpts)


def _wait_for(predicate, proc, timeout_s: float) -> bool:
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_at_many_moments_then_resume_matches_an_uninterrupted_run(assets, tmp_path):
    """Real kill -9s of the CLI process: during a checkpoint save, during an export of best/,
    and at seeded random moments. Each rerun resumes; the end is bitwise the run that was never
    interrupted, with each step exactly once in metrics.jsonl and a complete best/ and final/."""
    import random
    import subprocess
    import sys

    config = write_config(tmp_path / "c.yaml", assets, train={
        "save_every": 3, "eval_every": 4, "max_steps": 16, "log_every": 2, "tensorboard": False})
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAXTL_COMPILATION_CACHE=str(tmp_path / "xla-cache"))
    command = [sys.executable, "-m", "jaxtl.cli", "finetune", "--config", config]
    killed, straight = tmp_path / "killed", tmp_path / "straight"

    def start():
        return subprocess.Popen(command + ["--workdir", str(killed)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    ckpts = killed / "checkpoints"
    saving = lambda: ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir())  # noqa: E731
    exporting = lambda: (killed / "best.tmp").exists() or (killed / "best.old").exists()  # noqa: E731
    rng = random.Random(0)
    moments = [("mid-save", saving), ("mid-export", exporting),
               ("random", lambda: False), ("random", lambda: False)]
    survived = []
    for name, when in moments:
        metrics = killed / "metrics.jsonl"
        size_before = metrics.stat().st_size if metrics.exists() else 0
        proc = start()
        if name == "random":  # once this process trains (writes metrics), at a seeded moment
            started = _wait_for(lambda: metrics.exists() and metrics.stat().st_size > size_before,
                                proc, 240)
            hit = started and not _wait_for(lambda: False, proc, rng.uniform(0.0, 3.0))
        else:
            hit = _wait_for(when, proc, 240)
        if proc.poll() is not None:  # finished before this moment came
            break
        proc.kill()  # SIGKILL: no handler runs
        proc.wait(timeout=30)
        if hit:
            survived.append(name)
    print(f"\nkilled at: {survived}")
    assert "mid-save" in survived  # at least the save was hit (the run is long enough)

    for workdir in (killed, straight):
        done = subprocess.run(command + ["--workdir", str(workdir)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    assert_same_final_weights(killed, straight)
    assert_same_metrics(killed, straight)  # each event exactly once, the same numbers
    for export in ("best", "final"):
        assert (killed / export / "model.safetensors").is_file()
        assert not (killed / f"{export}.tmp").exists() and not (killed / f"{export}.old").exists()
    assert (killed / "best" / "jaxtl_best.json").read_text() == (straight / "best" / "jaxtl_best.json").read_text()


def test_a_torn_last_metrics_line_is_dropped_on_resume(assets, tmp_path, caplog):
    config = write_config(tmp_path / "c.yaml", assets, train={
        "save_every": 4, "max_steps": 8, "eval_every": 100, "log_every": 2, "tensorboard": False})
    cfg = config_lib.load(config)
    workdir = tmp_path / "run"
    with pytest.raises(train.Stopped):
        run_with_signal(cfg, workdir, at_step=5)  # stops after step 6
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "split": "tra')  # what a kill -9 mid-write leaves
    caplog.set_level("WARNING", logger="jaxtl")
    run_with_signal(cfg, workdir, at_step=None)
    assert "torn" in caplog.text
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [2, 4, 6, 8]


def test_export_rebuilds_from_checkpoint_metadata_without_the_training_data(assets, tmp_path, capsys):
    """`jaxtl export` needs neither the training file nor config.yaml: model config, labels and
    tokenizer travel with the checkpoint. --step and --best pick other checkpoints."""
    import shutil

    from safetensors.numpy import load_file

    train_copy = tmp_path / "train.csv"
    shutil.copy(assets["train"], train_copy)
    config = write_config(tmp_path / "c.yaml", assets, data={"train_file": str(train_copy)},
                          train={"max_steps": 6, "save_every": 2, "eval_every": 2, "log_every": 2,
                                 "keep_checkpoints": 5, "tensorboard": False})
    workdir = tmp_path / "run"
    assert cli.main(["finetune", "--config", config, "--workdir", str(workdir)]) == 0
    train_copy.unlink()
    (workdir / "config.yaml").unlink()
    out = tmp_path / "exported"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    final, exported = load_file(workdir / "final" / "model.safetensors"), load_file(out / "model.safetensors")
    assert final.keys() == exported.keys()
    for name in final:
        np.testing.assert_array_equal(final[name], exported[name], err_msg=name)
    model = transformers.BertForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()

    best_step = json.loads((workdir / "eval_results.json").read_text())["best"]["step"]
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "b"), "--best"]) == 0
    best, exported_best = load_file(workdir / "best" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for name in best:
        np.testing.assert_array_equal(best[name], exported_best[name], err_msg=name)
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "s2"), "--step", "2"]) == 0
    step2 = load_file(tmp_path / "s2" / "model.safetensors")
    assert any(not np.array_equal(step2[n], final[n]) for n in final)  # an earlier state
    assert f"exported step {best_step}" in capsys.readouterr().err


def test_a_trained_head_keeps_its_labels_and_refuses_others(assets, tmp_path, capsys):
    """Fine-tuning from a folder with a trained classifier maps the data to its id2label by name;
    a data label the head does not know stops the run naming it (never a mapping by position)."""
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig.from_pretrained(assets["ckpt"], num_labels=2,
                                                     id2label={0: "positive", 1: "negative"},
                                                     label2id={"positive": 0, "negative": 1})
    head = transformers.BertForSequenceClassification(config)
    folder = tmp_path / "trained"
    head.save_pretrained(folder)
    assets["tok"].save_pretrained(folder)
    base = write_config(tmp_path / "c.yaml", assets, model={"pretrained": str(folder)},
                        train={"max_steps": 2, "eval_every": 2, "tensorboard": False})
    assert cli.main(["finetune", "--config", base, "--workdir", str(tmp_path / "ok")]) == 0
    exported = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ok" / "final")
    assert exported.config.id2label == {0: "positive", 1: "negative"}  # the head's order, kept

    other = tmp_path / "other.csv"
    other.write_text("sentence,label\ngood film,great\nbad film,awful\n")
    bad = write_config(tmp_path / "bad.yaml", assets, model={"pretrained": str(folder)},
                       data={"train_file": str(other), "validation_file": None})
    capsys.readouterr()
    assert cli.main(["finetune", "--config", bad, "--workdir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "great" in err and "positive" in err and "negative" in err, err
