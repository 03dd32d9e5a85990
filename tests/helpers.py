"""Small builders shared by tests (plain functions, not fixtures)."""

from __future__ import annotations

import string
from pathlib import Path

import transformers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an and or but not is was are be to of in on at it this that with for as by from "
    "good bad great awful movie film story plot actor acting fun boring love hate very really "
    "so too much more most best worst one two three time day night man woman king queen lord "
    "what who where when why how yes no i you he she we they my your his her our their "
    "positive negative neutral sentence label text pair question answer"
).split()


def make_tokenizer(tmp_path: Path, *, lowercase: bool = True):
    """A tiny uncased BERT WordPiece tokenizer, saved to ``tmp_path/tokenizer`` and reloaded.

    The vocabulary holds the special tokens (``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2,
    ``[SEP]`` = 3, ``[MASK]`` = 4), ~100 common English words, and every ASCII letter, digit and
    punctuation mark both word-initial and as a ``##`` continuation, so any ASCII text tokenizes
    without ``[UNK]`` (unknown words fall apart into characters): 194 entries.

    Reloading with ``AutoTokenizer.from_pretrained(folder)`` is what users do, so tests exercise
    that path (``BertTokenizer(vocab_file=...)`` would silently give all ``[UNK]``).
    """
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    if not lowercase:
        chars += list(string.ascii_uppercase)
    vocab = SPECIAL_TOKENS + WORDS + chars + ["##" + c for c in chars if c.isalnum()]
    vocab = list(dict.fromkeys(vocab))  # drop repeats, keep order
    folder = Path(tmp_path) / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast(vocab=str(vocab_file), do_lower_case=lowercase)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(folder))
    return transformers.AutoTokenizer.from_pretrained(str(folder))


# ----------------------------------------------------------------------------- tiny models, data

POSITIVE = "good great love fun best".split()
NEGATIVE = "bad awful boring hate worst".split()
NEUTRAL_WORDS = "the a movie film story plot actor acting very really so one time day night".split()


def tiny_bert_config(vocab_size: int, **overrides) -> "transformers.BertConfig":
    """A 2-layer, 32-wide HF BertConfig (fast enough to train in tests)."""
    kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1)
    kw.update(overrides)
    return transformers.BertConfig(**kw)


def make_tiny_checkpoint(tmp_path: Path, tokenizer, *, cls=None, seed: int = 0, **overrides) -> Path:
    """A random tiny HF BERT folder (weights + config + tokenizer), as a user's checkpoint."""
    import torch

    cls = cls or transformers.BertForPreTraining
    torch.manual_seed(seed)
    model = cls(tiny_bert_config(len(tokenizer), **overrides))
    folder = Path(tmp_path) / f"tiny-{cls.__name__}"
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(sentence, label)`` rows whose label a tiny model can learn: which polarity words occur."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = list(rng.choice(NEUTRAL_WORDS, rng.integers(2, 10)))
        words += list(rng.choice(POSITIVE if label == "positive" else NEGATIVE, rng.integers(1, 3)))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, header, rows) -> str:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def run_with_signal(cfg, workdir: Path, at_step: int | None):
    """Run the train loop in-process, sending ourselves SIGTERM when step ``at_step`` is fetched."""
    import os
    import signal

    from jaxtl import tasks, train

    setup = tasks.setup_for(cfg)
    fetch = setup.train_batch

    def train_batch(step):
        if step == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return fetch(step)

    setup.train_batch = train_batch
    return train.train_loop(cfg, workdir, setup)


TRAIN_KEYS_THAT_VARY = ("examples_per_s", "tokens_per_s", "model_flops_per_s", "mfu", "mfu_vendor",
                        "wall_s")  # wall-clock


def read_metrics(workdir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_same_final_weights(workdir_a: Path, workdir_b: Path) -> None:
    """The two runs' exported ``final/`` weights are bitwise identical, name by name."""
    import numpy as np
    from safetensors.numpy import load_file

    a = load_file(workdir_a / "final" / "model.safetensors")
    b = load_file(workdir_b / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def assert_same_metrics(workdir_a: Path, workdir_b: Path) -> None:
    """Identical ``metrics.jsonl`` records, wall-clock throughput aside."""

    def comparable(workdir):
        # The `compile` line counts what this process compiled: fewer after a resume.
        return [{k: v for k, v in r.items() if k not in TRAIN_KEYS_THAT_VARY}
                for r in read_metrics(workdir) if r["split"] != "compile"]

    assert comparable(workdir_a) == comparable(workdir_b)
