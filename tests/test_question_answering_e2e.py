"""Question answering end to end through the CLI on a tiny BERT: ``jaxtl finetune`` with ``task:
question_answering`` lowers the loss; ``jaxtl evaluate`` / ``jaxtl predict`` run on the exported
``best/`` folder; ``transformers.pipeline("question-answering")`` on that export gives the answers
``jaxtl predict`` wrote; bad SQuAD files are one clear error line from the CLI subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers
import yaml
from helpers import make_tiny_checkpoint, make_tokenizer, read_metrics

from jaxtl import cli

REPO = Path(__file__).resolve().parents[1]
NAMES = "good bad great awful fun boring man woman king queen lord".split()
ROLES = ["actor", "movie", "story", "plot"]


def squad_rows(n: int, seed: int):
    """Questions "who is the <role>" over contexts "the <role> is <name> ." for every role."""
    rng = np.random.default_rng(seed)
    paragraphs = []
    for i in range(n):
        names = rng.choice(NAMES, len(ROLES), replace=False)
        context = " ".join(f"the {role} is {name} ." for role, name in zip(ROLES, names))
        k = int(rng.integers(len(ROLES)))
        answer = f"the {ROLES[k]} is {names[k]}"
        start = context.index(answer) + len(answer) - len(names[k])
        paragraphs.append({"context": context, "qas": [{
            "id": f"q{seed}-{i}", "question": f"who is the {ROLES[k]}?",
            "answers": [{"text": str(names[k]), "answer_start": start}]}]})
    return {"version": "1.1", "data": [{"title": "roles", "paragraphs": paragraphs}]}


def write_json(path: Path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    tok = make_tokenizer(root)
    ckpt = make_tiny_checkpoint(root, tok, cls=transformers.BertModel)
    return {"root": root, "ckpt": ckpt,
            "train": write_json(root / "train.json", squad_rows(96, seed=1)),
            "valid": write_json(root / "valid.json", squad_rows(16, seed=2))}


def write_config(path: Path, assets, **data) -> str:
    raw = {
        "task": "question_answering",
        "model": {"pretrained": str(assets["ckpt"])},
        "data": {"train_file": assets["train"], "validation_file": assets["valid"],
                 "max_seq_length": 48, "doc_stride": 16, "max_query_length": 12,
                 "max_answer_length": 5, "bucket_sizes": [32, 48], **data},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "epochs": 6, "log_every": 6, "eval_every": 18, "seed": 0,
                  "progress": False, "tensorboard": False},
    }
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_finetune_evaluate_predict_and_pipeline(assets, tmp_path, capsys):
    config = write_config(tmp_path / "qa.yaml", assets)
    workdir = tmp_path / "run"
    assert cli.main(["finetune", "--config", config, "--workdir", str(workdir)]) == 0
    records = read_metrics(workdir)
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < 0.7 * losses[0], losses
    validation = json.loads((workdir / "eval_results.json").read_text())["validation"]
    assert {"exact", "f1", "total"} <= set(validation) and validation["total"] == 16
    # The overlap baseline answers "who is the actor?" with "the actor is X ." (normalized
    # "actor is X"): never exact, F1 2 * (1/3 * 1) / (1/3 + 1) = 0.5 on every question.
    assert validation["baseline_exact"] == 0.0
    assert validation["baseline_f1"] == pytest.approx(50.0)
    print("QA e2e: train loss", [round(x, 3) for x in losses], "validation", validation,
          file=sys.__stderr__)

    best = workdir / "best"
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(best), "--file", assets["valid"],
                     "--config", config]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["examples"] == 16 and 0 <= evaluated["f1"] <= 100
    out = tmp_path / "answers.jsonl"
    assert cli.main(["predict", "--model", str(best), "--file", assets["valid"],
                     "--config", config, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"q2-{i}" for i in range(16)]
    assert set(rows[0]) == {"id", "answer", "answer_start", "answer_end", "score"}
    # Without --config, predict takes the QA defaults (the head's task) plus --set values.
    out2 = tmp_path / "answers2.jsonl"
    sets = [x for key, value in (("max_seq_length", 48), ("doc_stride", 16), ("max_query_length", 12),
                                  ("max_answer_length", 5))
            for x in ("--set", f"data.{key}={value}")]
    assert cli.main(["predict", "--model", str(best), "--file", assets["valid"], *sets,
                     "--output", str(out2)]) == 0
    assert out2.read_text() == out.read_text()

    # The export in transformers answers as jaxtl predict does. transformers 5 removed
    # pipeline("question-answering") (REMOVED_TASKS in transformers/pipelines/__init__.py), so the
    # reference is its decoding written out over AutoModelForQuestionAnswering's logits: the best
    # start <= end over context tokens with at most max_answer_len tokens (the pipeline took the
    # top of p_start * p_end, the same argmax as start + end logits within one window).
    import torch

    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(best)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(best))
    data = json.loads(Path(assets["valid"]).read_text())["data"][0]["paragraphs"]
    agree = 0
    for paragraph, row in zip(data, rows):
        context, question = paragraph["context"], paragraph["qas"][0]["question"]
        enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].tolist()
        context_token = np.array([s == 1 for s in enc.sequence_ids(0)])
        with torch.no_grad():
            out = model(**enc)
        start, end = out.start_logits[0].numpy(), out.end_logits[0].numpy()
        scores = start[:, None] + end[None, :]
        L = len(start)
        valid = (np.triu(np.ones((L, L), bool)) & ~np.triu(np.ones((L, L), bool), 5)
                 & context_token[:, None] & context_token[None, :])
        s, e = np.unravel_index(np.where(valid, scores, -np.inf).argmax(), scores.shape)
        hf_answer = (context[offsets[s][0] : offsets[e][1]], offsets[s][0], offsets[e][1])
        assert hf_answer == (row["answer"], row["answer_start"], row["answer_end"]), (hf_answer, row)
        assert abs(float(scores[s, e]) - row["score"]) < 1e-4
        agree += 1
    assert agree == 16


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxtl.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


CONTEXT = "the king is good . the queen is bad ."


@pytest.mark.parametrize("qa_record, paragraph, expected", [
    ({"id": "moved", "question": "who is the king?", "answers": [{"text": "good", "answer_start": 3}]},
     {"context": CONTEXT}, "question id moved: answer 'good' is not at its answer_start=3"),
    ({"id": "long", "question": "who " * 60 + "is the king?",
      "answers": [{"text": "good", "answer_start": 12}]},
     {"context": CONTEXT}, "question id long: the question has 64 tokens"),
    ({"id": "nocontext", "question": "who is the king?", "answers": []},
     {}, "question id nocontext: missing 'context'"),
])
def test_bad_squad_file_is_one_clear_error(assets, tmp_path, qa_record, paragraph, expected):
    bad = write_json(tmp_path / "bad.json", {"data": [{"paragraphs": [{**paragraph, "qas": [qa_record]}]}]})
    config = write_config(tmp_path / "qa.yaml", assets, train_file=bad)
    proc = run_cli("finetune", "--config", config, "--workdir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("jaxtl: error:")]
    assert len(lines) == 1 and bad in lines[0] and expected in lines[0], proc.stderr
