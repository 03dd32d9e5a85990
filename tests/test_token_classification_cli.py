"""Token classification end to end on a tiny BERT: `jaxtl finetune` (task: token_classification)
lowers the loss, `jaxtl predict` / `jaxtl evaluate` on the exported best/ folder, the export in
transformers' `pipeline("token-classification", aggregation_strategy="first")` gives the same
entities as `jaxtl predict`, and bad input is one clear DataError line through the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
import yaml
from helpers import make_tiny_checkpoint, make_tokenizer, read_metrics

from jaxtl import cli

REPO = Path(__file__).resolve().parents[1]
PEOPLE = ["Ana", "Bo", "Carl", "Dora", "Eve"]
SURNAMES = ["Smith", "Jones", "Kim"]
PLACES = ["Rome", "Paris", "Oslo", "Lima"]
OTHER = "the a and to of in on at it was my his her good day night man woman king queen".split()


def tagged_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences of plain words (O), people (B-PER, a surname I-PER) and places (B-LOC)."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        sentence = []
        for _ in range(rng.randint(3, 9)):
            r = rng.random()
            if r < 0.2:
                sentence.append((rng.choice(PEOPLE), "B-PER"))
                if rng.random() < 0.5:
                    sentence.append((rng.choice(SURNAMES), "I-PER"))
            elif r < 0.35:
                sentence.append((rng.choice(PLACES), "B-LOC"))
            else:
                sentence.append((rng.choice(OTHER), "O"))
        sentences.append(sentence)
    return sentences


def write_conll(path: Path, sentences, *, tags: bool = True) -> str:
    lines = ["-DOCSTART- -X- O", ""]
    for sentence in sentences:
        lines += [f"{word} NN {tag}" if tags else word for word, tag in sentence] + [""]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokcls")
    tok = make_tokenizer(root, lowercase=False)
    ckpt = make_tiny_checkpoint(root, tok, cls=transformers.BertModel)
    sentences = tagged_sentences(200, seed=1)
    return {"root": root, "ckpt": ckpt, "train": write_conll(root / "train.conll", sentences[:160]),
            "valid": write_conll(root / "valid.conll", sentences[160:]),
            "valid_sentences": sentences[160:]}


def write_config(path: Path, assets, **data) -> str:
    raw = {
        "task": "token_classification",
        "model": {"pretrained": str(assets["ckpt"])},
        "data": {"train_file": assets["train"], "validation_file": assets["valid"],
                 "max_seq_length": 16, "bucket_sizes": [8, 16], **data},
        "optim": {"lr": 5e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "epochs": 6, "log_every": 10, "seed": 0, "progress": False,
                  "tensorboard": False},
    }
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def entities(words, tags) -> set[tuple[str, int, int]]:
    """(type, start char, end char) of each entity in the space-joined words (seqeval's reading)."""
    from seqeval.metrics.sequence_labeling import get_entities

    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    return {(kind, starts[a], starts[b] + len(words[b])) for kind, a, b in get_entities(list(tags))}


def test_finetune_predict_evaluate_and_pipeline_agree(assets, tmp_path):
    # max_seq_length 16 splits the longer sentences into windows, in training and in predict
    config = write_config(tmp_path / "c.yaml", assets)
    workdir = tmp_path / "run"
    assert cli.main(["finetune", "--config", config, "--workdir", str(workdir)]) == 0
    train_losses = [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0], train_losses
    results = json.loads((workdir / "eval_results.json").read_text())["validation"]
    assert results["entity_f1"] >= 0.8, results
    assert {"entity_precision", "entity_recall", "token_accuracy"} <= set(results)
    # Every word of this data always has one tag, and all are seen in training: the
    # most-frequent-tag baseline is perfect here.
    assert results["baseline_token_accuracy"] == 1.0 and results["baseline_entity_f1"] == 1.0

    best = workdir / "best"
    hf_config = json.loads((best / "config.json").read_text())
    assert hf_config["architectures"] == ["BertForTokenClassification"]
    assert hf_config["id2label"] == {"0": "O", "1": "B-LOC", "2": "I-LOC", "3": "B-PER", "4": "I-PER"} \
        or set(hf_config["id2label"].values()) == {"O", "B-LOC", "B-PER", "I-PER"}

    # evaluate on the export (no config: the head's task defaults read the CoNLL file)
    out_json = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--model", str(best), "--file", assets["valid"],
                     "--output", str(out_json)]) == 0
    evaluated = json.loads(out_json.read_text())
    assert evaluated["sentences"] == 40
    assert evaluated["entity_f1"] == pytest.approx(results["entity_f1"], abs=1e-6)

    # predict: CoNLL out (word<TAB>tag per line), and JSONL with tokens/tags per sentence
    untagged = write_conll(tmp_path / "new.txt", assets["valid_sentences"], tags=False)
    out_conll, out_jsonl = tmp_path / "pred.conll", tmp_path / "pred.jsonl"
    for out in (out_conll, out_jsonl):
        assert cli.main(["predict", "--model", str(best), "--file", untagged, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [[w for w, _ in s] for s in assets["valid_sentences"]]
    blocks = out_conll.read_text().strip().split("\n\n")
    assert [[line.split("\t")[1] for line in block.splitlines()] for block in blocks] == [
        r["tags"] for r in rows]

    # transformers' pipeline on the export finds the entities jaxtl predicts
    tagger = transformers.pipeline("token-classification", model=str(best), tokenizer=str(best),
                                   aggregation_strategy="first", device="cpu")
    differing = []
    for row in rows:
        text = " ".join(row["tokens"])
        found = {(e["entity_group"], e["start"], e["end"]) for e in tagger(text)}
        expected = entities(row["tokens"], row["tags"])
        if found != expected:
            differing.append((text, row["tags"], found, expected))
    # Sentences that jaxtl split into windows see less context than the pipeline (one pass over
    # the whole sentence); the rest must agree exactly.
    tok = transformers.AutoTokenizer.from_pretrained(str(best))
    unsplit = [d for d in differing
               if len(tok(d[0].split(), is_split_into_words=True)["input_ids"]) <= 16]
    windowed = [r for r in rows if len(tok(r["tokens"], is_split_into_words=True)["input_ids"]) > 16]
    print(f"PIPELINE {len(rows)} sentences ({len(windowed)} in windows): {len(differing)} differ, "
          f"{len(unsplit)} of them unwindowed")
    assert windowed, "no sentence long enough to need windows"
    assert not unsplit, unsplit[:3]
    assert len(differing) <= len(windowed)


def run_cli(tmp_path: Path, assets, **data) -> subprocess.CompletedProcess:
    config = write_config(tmp_path / "bad.yaml", assets, **data)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "jaxtl.cli", "finetune", "--config", config,
               "--workdir", str(tmp_path / "run")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


CASES = [
    # (name, file content, config key, what the message says)
    ("no_tags.conll", "Ana B-PER\nruns O\n\nBo\nsleeps O\n", "train_file", "line 4: 1 column(s)"),
    ("unseen_tag.conll", "Ana B-PER\n\nin O\nOslo B-LOC\nnow B-TIME\n", "validation_file",
     "line 5: tag 'B-TIME' is not among"),
    ("empty.conll", "\n-DOCSTART- -X- O\n\n", "validation_file", "no sentences"),
]


@pytest.mark.parametrize("name, content, key, says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_data_error_line(assets, tmp_path, name, content, key, says):
    bad = tmp_path / name
    bad.write_text(content)
    done = run_cli(tmp_path, assets, **{key: str(bad)})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "jaxtl: error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert str(bad) in errors[0] and says in errors[0], errors[0]
