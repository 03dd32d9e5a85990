"""Golden batches: the data layer's output, bit for bit, as recorded before the split of issue 10.

The digests were computed with the data code of commit 5fd046d (before ``jaxtl/data`` was cut
into tables/text/classification/masking/pretraining/batching). A mismatch means the same
``(seed, step)`` no longer gives the same batch: resumed runs and recorded results would drift.
"""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import transformers
from helpers import WORDS, make_tokenizer

from jaxtl.config import FinetuneDataConfig, PretrainDataConfig

BUCKETS = [8, 16, 32, 64, 512]


def digest(batches, skip=()) -> str:
    """sha256 over every array of every batch (key, dtype, shape and bytes), keys sorted."""
    h = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            if key in skip:
                continue
            value = np.ascontiguousarray(batch[key])
            h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
            h.update(value.tobytes())
    return h.hexdigest()[:16]


def classification_inputs(tmp):
    """(tokenizer, labelled CSV config, regression pair TSV config)."""
    tok = make_tokenizer(tmp)
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, rng.integers(1, 61))) for _ in range(500)]
    with open(tmp / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        writer.writerows([t, ["neg", "pos", "mid"][i % 3]] for i, t in enumerate(texts))
    labelled = FinetuneDataConfig(train_file=str(tmp / "train.csv"), max_seq_length=48,
                                  bucket_sizes=BUCKETS, validation_fraction=0.1)
    lines = ["q\ta\tscore"] + [f"{texts[i]}\t{texts[-i - 1]}\t{i / 7:.3f}" for i in range(120)]
    (tmp / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = FinetuneDataConfig(train_file=str(tmp / "pairs.tsv"), text_column="q",
                               text_pair_column="a", label_column="score", regression=True,
                               max_seq_length=40, bucket_sizes=[16, 24], test_fraction=0.2)
    return tok, labelled, pairs


def pretraining_inputs(tmp):
    """(tokenizer, corpus path): documents of one-sentence lines; words used once, or pieces."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(3000)]
    vocab += [f"p{i}" for i in range(50)] + [f"##q{i}" for i in range(10)]
    tok = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    rng = np.random.default_rng(0)
    counter, docs = 0, []
    for _ in range(30):
        lines = []
        for _ in range(rng.integers(4, 12)):
            words = []
            for _ in range(rng.integers(3, 11)):
                if rng.random() < 0.2:
                    words.append(f"p{rng.integers(50)}" + "".join(
                        f"q{k}" for k in rng.integers(0, 10, rng.integers(1, 3))))
                else:
                    words.append(f"w{counter}")
                    counter += 1
            lines.append(" ".join(words))
        docs.append("\n".join(lines))
    path = tmp / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return tok, path


PRETRAIN_CASES = {
    "nsp": dict(),
    "mlm_only": dict(nsp=False),
    "wwm_short": dict(whole_word_mask=True, short_seq_prob=0.5, max_predictions=5),
}

# Recorded with commit 5fd046d's jaxtl.data (train_batch/eval_batches functions and methods).
GOLDEN = {
    "cls_train": "31607fddb34fe35b",
    "cls_train_p1of2": "3248689aeea739ed",
    "cls_val": "271ff6ef2f1c2e1c",
    "cls_val_p0of2": "13c6ceb4b37649ea",
    "cls_train_eval": "5a5eef958d37d5a8",
    "reg_train": "f3ec814bcacaab2b",
    "reg_test": "2821fc755617d8e4",
    "reg_predict": "4653c0fa2b4bb72d",
    "pt_nsp_spe": 8,
    "pt_nsp_train": "ac43ff4017eef438",
    "pt_nsp_train_p1of2": "d4a915c25c2f5d5e",
    "pt_nsp_eval": "05927350381dca4d",
    "pt_nsp_eval_p1of2": "0df3b2a5217b75ac",
    "pt_nsp_num_eval": 4,
    "pt_nsp_unigram": 0.0125,
    "pt_nsp_nsp": 0.65,
    "pt_mlm_only_spe": 6,
    "pt_mlm_only_train": "320c55d064c2da0a",
    "pt_mlm_only_train_p1of2": "4d78b2e350ca0bfe",
    "pt_mlm_only_eval": "e66757d822af4641",
    "pt_mlm_only_eval_p1of2": "2809c64fc32e1ea3",
    "pt_mlm_only_num_eval": 3,
    "pt_mlm_only_unigram": 0.01818181818181818,
    "pt_mlm_only_nsp": 1.0,
    "pt_wwm_short_spe": 10,
    "pt_wwm_short_train": "41e54f191863a3ba",
    "pt_wwm_short_train_p1of2": "abb7288e40fde007",
    "pt_wwm_short_eval": "ae25be77ecc078ee",
    "pt_wwm_short_eval_p1of2": "9944108f411609c5",
    "pt_wwm_short_num_eval": 4,
    "pt_wwm_short_unigram": 0.024390243902439025,
    "pt_wwm_short_nsp": 0.6521739130434783,
}


def classification_digests(tmp) -> dict:
    from jaxtl.data.batching import ClassificationBatcher as Batcher
    from jaxtl.data.classification import load_classification_data, load_prediction_split

    out = {}
    tok, labelled, pairs = classification_inputs(tmp)
    data = load_classification_data(labelled, tok, max_positions=512)
    kw = dict(bucket_sizes=labelled.bucket_sizes)
    train = Batcher(data.train, batch_size=16, seed=3, **kw)
    out["cls_train"] = digest(train.train_batch(s) for s in range(train.steps_per_epoch + 4))
    half = Batcher(data.train, batch_size=16, seed=3, process_index=1, process_count=2, **kw)
    out["cls_train_p1of2"] = digest(half.train_batch(s) for s in range(6))
    out["cls_val"] = digest(Batcher(data.validation, batch_size=12, **kw).eval_batches())
    out["cls_val_p0of2"] = digest(
        Batcher(data.validation, batch_size=12, process_count=2, **kw).eval_batches()
    )
    out["cls_train_eval"] = digest(Batcher(data.train, batch_size=48, **kw).eval_batches())
    data = load_classification_data(pairs, tok, max_positions=512)
    kw = dict(bucket_sizes=pairs.bucket_sizes)
    train = Batcher(data.train, batch_size=8, seed=0, **kw)
    out["reg_train"] = digest(train.train_batch(s) for s in range(2 * train.steps_per_epoch))
    out["reg_test"] = digest(Batcher(data.test, batch_size=10, **kw).eval_batches())
    split = load_prediction_split(pairs.train_file, pairs, tok, max_positions=512, labels=None)
    out["reg_predict"] = digest(Batcher(split, batch_size=7, **kw).eval_batches())
    return out


def pretraining_digests(tmp) -> dict:
    from jaxtl.data import pretraining as pt
    from jaxtl.data.batching import PretrainingBatcher as Batcher

    out = {}
    tok, path = pretraining_inputs(tmp)
    for name, extra in PRETRAIN_CASES.items():
        cfg = dict(train_files=[str(path)], max_seq_length=32, validation_fraction=0.2) | extra
        train, val = pt.load_pretraining_data(
            PretrainDataConfig(**cfg), tok, model_vocab_size=4000
        )
        batches = Batcher(train, batch_size=8, seed=5)
        spe = batches.steps_per_epoch
        out[f"pt_{name}_spe"] = spe
        steps = list(range(spe + 2)) + [3 * spe + 1]
        out[f"pt_{name}_train"] = digest(batches.train_batch(s) for s in steps)
        half = Batcher(train, batch_size=8, seed=5, process_index=1, process_count=2)
        out[f"pt_{name}_train_p1of2"] = digest(half.train_batch(s) for s in range(4))
        evals = Batcher(val, batch_size=6, seed=5)
        # "index" is new in pretraining evaluation batches (one batch interface for every task).
        out[f"pt_{name}_eval"] = digest(evals.eval_batches(), skip=("index",))
        half = Batcher(val, batch_size=6, seed=5, process_index=1, process_count=2)
        out[f"pt_{name}_eval_p1of2"] = digest(half.eval_batches(), skip=("index",))
        out[f"pt_{name}_num_eval"] = evals.num_eval_batches
        out[f"pt_{name}_unigram"] = pt.unigram_baseline_accuracy(train, evals.eval_batches())
        out[f"pt_{name}_nsp"] = pt.nsp_baseline_accuracy(val)
    return out


@pytest.mark.parametrize("digests", [classification_digests, pretraining_digests])
def test_batches_are_bitwise_those_recorded_before_the_split(digests, tmp_path):
    got = digests(tmp_path)
    expected = {k: GOLDEN[k] for k in got}
    assert got == expected, {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
