"""Fine-tuning data: reading, label mapping, carving, errors, and the batch plan."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from helpers import WORDS, make_tokenizer

from jaxtl.config import FinetuneDataConfig
from jaxtl.data import classification as C
from jaxtl.data.batching import ClassificationBatcher
from jaxtl.errors import DataError

PAD = 0
BUCKETS = [8, 16, 32, 64, 512]  # 512 > max_seq_length: must be dropped


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def sentences(n, seed=0, max_words=40):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, max_words + 1))) for _ in range(n)]


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def cfg(**kw):
    kw.setdefault("max_seq_length", 48)
    return FinetuneDataConfig(**kw)


def load(tok, **kw):
    return C.load_classification_data(cfg(**kw), tok, max_positions=512)


@pytest.fixture(scope="module")
def big(tok, tmp_path_factory):
    """A 500-example train split with lengths spread over 3..48 tokens."""
    path = tmp_path_factory.mktemp("big") / "train.csv"
    texts = sentences(500, seed=1, max_words=60)
    labels = [["neg", "pos", "mid"][i % 3] for i in range(500)]
    write_csv(path, ["sentence", "label"], zip(texts, labels, strict=True))
    return load(tok, train_file=str(path)).train


# ---------------------------------------------------------------------------- reading and labels


def test_csv_string_labels_sorted_and_tokenized(tok, tmp_path):
    path = write_csv(
        tmp_path / "t.csv",
        ["sentence", "label", "extra"],
        [
            ["the movie was good", "pos", "x"],
            ["awful, boring film", "neg", "y"],
            ["so-so, I guess", "mid", ""],
        ],
    )
    data = load(tok, train_file=path)
    assert data.labels == ("mid", "neg", "pos")
    assert not data.regression and data.validation is None and data.test is None
    split = data.train
    assert split.labels.dtype == np.int32 and split.labels.tolist() == [2, 1, 0]
    assert split.texts[1] == ("awful, boring film", None)
    ids = split.input_ids[0]
    assert ids.dtype == np.int32 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids[1:-1]) == "the movie was good"
    assert len(split) == 3 and all((t == 0).all() for t in split.token_type_ids)


def test_integer_labels_sort_numerically_in_csv_and_jsonl(tok, tmp_path):
    rows = [{"sentence": f"text {i}", "label": lab} for i, lab in enumerate([10, 2, 1, 2, 10])]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    data = load(tok, train_file=str(jsonl))
    assert data.labels == ("1", "2", "10")
    assert data.train.labels.tolist() == [2, 1, 0, 1, 2]

    path = write_csv(
        tmp_path / "t.csv", ["sentence", "label"], [[r["sentence"], r["label"]] for r in rows]
    )
    assert load(tok, train_file=path).labels == ("1", "2", "10")
    # A JSON list and a dict of columns read the same; 1.0 is the label "1".
    (tmp_path / "list.json").write_text(json.dumps(rows), encoding="utf-8")
    cols = {"sentence": [r["sentence"] for r in rows], "label": [float(r["label"]) for r in rows]}
    (tmp_path / "cols.json").write_text(json.dumps(cols), encoding="utf-8")
    for name in ("list.json", "cols.json"):
        assert load(tok, train_file=str(tmp_path / name)).train.labels.tolist() == [2, 1, 0, 1, 2]


def test_configured_and_checkpoint_label_order(tok, tmp_path):
    path = write_csv(tmp_path / "t.csv", ["sentence", "label"], [["a", "pos"], ["b", "neg"]])
    data = load(tok, train_file=path, labels=["pos", "neg", "neutral"])
    assert data.labels == ("pos", "neg", "neutral") and data.train.labels.tolist() == [0, 1]
    data = C.load_classification_data(
        cfg(train_file=path), tok, max_positions=512, labels=("neg", "pos")
    )
    assert data.labels == ("neg", "pos") and data.train.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="data.labels.*checkpoint"):
        C.load_classification_data(
            cfg(train_file=path, labels=["pos", "neg"]),
            tok,
            max_positions=512,
            labels=("neg", "pos"),
        )
    with pytest.raises(
        DataError, match=r"t\.csv, line 2: label 'pos'.*'label'.*\['neg', 'neutral'\]"
    ):
        load(tok, train_file=path, labels=["neg", "neutral"])


def test_regression_and_text_pairs(tok, tmp_path):
    path = write_csv(
        tmp_path / "t.tsv",
        ["q", "a", "score"],
        [['he said "yes', "no", "0.5"], ["what", "the king", "4"]],
        delimiter="\t",
    )
    # csv.writer would quote the field with a bare quote; TSV takes quotes literally: write raw.
    (tmp_path / "t.tsv").write_text(
        'q\ta\tscore\nhe said "yes\tno\t0.5\nwhat\tthe king\t4\n', encoding="utf-8"
    )
    data = load(
        tok,
        train_file=path,
        text_column="q",
        text_pair_column="a",
        label_column="score",
        regression=True,
    )
    assert data.regression and data.labels == ("score",)
    assert data.train.labels.dtype == np.float32 and data.train.labels.tolist() == [0.5, 4.0]
    assert data.train.texts[0] == ('he said "yes', "no")
    types = data.train.token_type_ids[1]
    assert types[0] == 0 and types[-1] == 1 and len(types) == len(data.train.input_ids[1])
    with pytest.raises(
        DataError, match=r"t\.tsv, line 3: column 'score' holds 'four', not a number"
    ):
        (tmp_path / "t.tsv").write_text("q\ta\tscore\nx\ty\t1\nz\tw\tfour\n", encoding="utf-8")
        load(
            tok,
            train_file=path,
            text_column="q",
            text_pair_column="a",
            label_column="score",
            regression=True,
        )


def test_truncation_to_max_seq_length(tok, tmp_path):
    path = write_csv(
        tmp_path / "t.csv", ["sentence", "label"], [[" ".join(["movie"] * 100), 1], ["a", 0]]
    )
    split = load(tok, train_file=path, max_seq_length=16).train
    assert len(split.input_ids[0]) == 16 and split.input_ids[0][-1] == tok.sep_token_id


def test_carving_is_deterministic_disjoint_and_seeded(tok, tmp_path):
    texts = [f"sentence {i}" for i in range(100)]
    path = write_csv(
        tmp_path / "t.csv", ["sentence", "label"], [[t, i % 2] for i, t in enumerate(texts)]
    )
    kw = dict(train_file=path, validation_fraction=0.2, test_fraction=0.1)
    data = load(tok, **kw)
    parts = [[t for t, _ in s.texts] for s in (data.train, data.validation, data.test)]
    assert [len(p) for p in parts] == [70, 20, 10]
    assert sorted(sum(parts, [])) == sorted(texts)  # disjoint and complete
    assert parts[1] == sorted(parts[1], key=texts.index)  # held-out rows keep file order
    assert "split_seed=1234" in data.validation.source
    again = load(tok, **kw)
    assert [t for t, _ in again.validation.texts] == parts[1]
    other = load(tok, split_seed=7, **kw)
    assert [t for t, _ in other.validation.texts] != parts[1]
    # An explicit validation file wins; only the test fraction is carved.
    val = write_csv(tmp_path / "v.csv", ["sentence", "label"], [["x", 1]])
    data = load(tok, validation_file=val, **kw)
    assert len(data.validation) == 1 and len(data.test) == 10 and len(data.train) == 90


def test_unseen_validation_label_names_file_column_value(tok, tmp_path):
    train = write_csv(tmp_path / "train.csv", ["sentence", "label"], [["a", "pos"], ["b", "neg"]])
    val = write_csv(tmp_path / "val.csv", ["sentence", "label"], [["c", "pos"], ["d", "meh"]])
    with pytest.raises(DataError, match=r"val\.csv, line 3: label 'meh' in column 'label'"):
        load(tok, train_file=train, validation_file=val)


# ---------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "content, kw, pattern",
    [
        (None, {}, r"missing\.csv: no such file"),
        (b"", {}, r"bad\.csv: the file is empty"),
        (b"sentence,label\n", {}, r"bad\.csv: the file has a header but no rows"),
        (
            b"text,y\nhi,1\n",
            {},
            r"bad\.csv: no column 'sentence' \(data\.text_column\); available columns: 'text', 'y'",
        ),
        (
            b"sentence,y\nhi,1\n",
            {},
            r"no column 'label' \(data\.label_column\); available columns: 'sentence', 'y'",
        ),
        (
            b"sentence,label\nok,1\ncaf\xe9,0\n",
            {},
            r"bad\.csv: not valid UTF-8: byte 0xe9 at offset 23 \(line 3\)",
        ),
        (b"sentence,label\nok,1\n  ,0\n", {}, r"bad\.csv, line 3: column 'sentence' is empty"),
        (b"sentence,label\nok,1\nno,\n", {}, r"bad\.csv, line 3: column 'label' is empty"),
        (
            b"sentence,label\nok,1\nhi, there,0\n",
            {},
            r"bad\.csv, line 3: 3 fields but the header has 2",
        ),
        (b"sentence,label\nok,1\nhi,1\n", {}, r"single value '1'.*data\.regression"),
        (
            b"sentence,label\nok,1\nhi,0\n",
            {"max_seq_length": 1024},
            r"data\.max_seq_length=1024 .* max_position_embeddings=512",
        ),
    ],
)
def test_bad_inputs_raise_named_errors(tok, tmp_path, content, kw, pattern):
    path = tmp_path / ("missing.csv" if content is None else "bad.csv")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=pattern):
        load(tok, train_file=str(path), **kw)


def test_bad_json_names_line(tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"sentence": "a", "label": 1}\n{"sentence": "b", \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load(tok, train_file=str(path))


def test_unknown_hub_dataset_offline_is_a_clear_error(tok):
    with pytest.raises(
        DataError, match=r"could not load dataset 'no-such-dataset-xyz'.*data\.train_file"
    ):
        load(tok, dataset="no-such-dataset-xyz")


def test_datasets_splits_and_class_label_names(tok, tmp_path):
    """The `data.dataset` path, offline: a local folder of parquet splits with a ClassLabel."""
    import datasets

    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
        }
    )
    splits = {
        "train": ["good", "bad", "fun", "awful"],
        "validation": ["ok", "meh"],
        "test": ["x", "y"],
    }
    for name, texts in splits.items():
        labels = (
            [-1, -1] if name == "test" else [i % 2 for i in range(len(texts))]
        )  # GLUE hides test
        table = datasets.Dataset.from_dict({"sentence": texts, "label": labels}, features=features)
        table.to_parquet(str(tmp_path / f"{name}.parquet"))
    data = load(tok, dataset=str(tmp_path), test_split="test")
    assert data.labels == ("negative", "positive")  # the dataset's id order, not sorted names
    assert data.train.labels.tolist() == [0, 1, 0, 1] and data.validation.labels.tolist() == [0, 1]
    assert data.test.labels is None and data.test.texts == [("x", None), ("y", None)]
    assert data.train.source.endswith("[train]")
    with pytest.raises(
        DataError, match=r"has no split 'dev' \(data\.test_split\); splits: train, validation, test"
    ):
        load(tok, dataset=str(tmp_path), test_split="dev")


def test_prediction_split_label_column_optional(tok, tmp_path):
    path = write_csv(
        tmp_path / "p.csv", ["sentence"], [["good movie"], ["bad"], ["the worst film"]]
    )
    split = C.load_prediction_split(path, cfg(), tok, max_positions=512, labels=("neg", "pos"))
    assert split.name == "predict" and split.labels is None and len(split) == 3
    batches = list(ClassificationBatcher(split, batch_size=4, bucket_sizes=BUCKETS).eval_batches())
    assert len(batches) == 1 and "labels" not in batches[0]
    assert sorted(batches[0]["index"].tolist()) == [-1, 0, 1, 2]
    labelled = write_csv(
        tmp_path / "l.csv", ["sentence", "label"], [["good", "pos"], ["bad", "neg"]]
    )
    split = C.load_prediction_split(labelled, cfg(), tok, max_positions=512, labels=("neg", "pos"))
    assert split.labels.tolist() == [1, 0]


# ---------------------------------------------------------------------------- batching


def batcher(split, **kw):
    """The batcher these tests use: 16 rows, seed 3; ``kw`` overrides (processes, ...)."""
    return ClassificationBatcher(split, **(dict(batch_size=16, seed=3, bucket_sizes=BUCKETS) | kw))


def first_examples(split, n):
    """The split cut to its first ``n`` examples."""
    return dataclasses.replace(
        split, input_ids=split.input_ids[:n], token_type_ids=split.token_type_ids[:n],
        labels=split.labels[:n], texts=split.texts[:n],
    )  # fmt: skip


def test_train_batch_shapes_come_from_the_bucket_set(big):
    lengths = [len(x) for x in big.input_ids]
    assert min(lengths) <= 8 and max(lengths) == 48  # long examples are truncated to 48
    seen = set()
    batches = batcher(big)
    assert big.max_seq_length == 48 and big.pad_id == PAD
    assert batches.buckets == [8, 16, 32, 48]  # 64 and 512 dropped, max_seq_length added
    for step in range(batches.steps_per_epoch):
        batch = batches.train_batch(step)
        b, seq_len = batch["input_ids"].shape
        seen.add(seq_len)
        assert b == 16 and seq_len in (8, 16, 32, 48)
        longest = int(batch["attention_mask"].sum(1).max())
        assert longest <= seq_len and (
            seq_len == 8 or longest > [8, 16, 32, 48][[8, 16, 32, 48].index(seq_len) - 1]
        )
        assert {k: v.dtype for k, v in batch.items()} == {
            "input_ids": np.int32, "attention_mask": np.int32, "token_type_ids": np.int32,
            "labels": np.int32, "example_weight": np.float32,
        }  # fmt: skip
        assert (batch["example_weight"] == 1).all()
        assert ((batch["input_ids"] == PAD) == (batch["attention_mask"] == 0)).all()
    assert len(seen) >= 3  # sortish batches use the small buckets, not always the longest


def test_train_batch_is_pure_and_each_example_once_per_epoch(big):
    spe = batcher(big).steps_per_epoch
    assert spe == 500 // 16
    rows = {tuple(x.tolist()): i for i, x in enumerate(big.input_ids)}
    assert len(rows) == len(big)  # distinct examples, so rows identify them

    def epoch_examples(epoch, seed=3):
        out = []
        batches = batcher(big, seed=seed)
        for step in range(epoch * spe, (epoch + 1) * spe):
            batch = batches.train_batch(step)
            for ids, mask, label in zip(
                batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
            ):
                i = rows[tuple(ids[mask == 1].tolist())]
                assert big.labels[i] == label
                out.append(i)
        return out

    e0, e1 = epoch_examples(0), epoch_examples(1)
    assert len(set(e0)) == len(e0) == spe * 16  # each at most once; only the remainder dropped
    assert e0 != e1 and set(e0) != set(e1)  # a new order, and another remainder left out
    # Same (seed, step) gives the same batch, whatever was computed in between.
    batches = batcher(big)
    first = batches.train_batch(5)
    batches.train_batch(5 + 3 * spe)
    fresh = batcher(big)  # a batcher without the cached plan
    for again in (batches.train_batch(5), fresh.train_batch(5)):
        assert all((first[k] == again[k]).all() for k in first)
    assert epoch_examples(0, seed=4) != e0


def test_process_slices_concatenate_to_the_global_batch(big):
    whole_batches = batcher(big)
    halves = [batcher(big, process_index=p, process_count=2) for p in range(2)]
    for step in range(whole_batches.steps_per_epoch + 3):  # all of epoch 0, some of epoch 1
        whole = whole_batches.train_batch(step)
        parts = [half.train_batch(step) for half in halves]
        for key in whole:
            assert parts[0][key].shape[0] == 8
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    with pytest.raises(DataError, match="batch size 16 is not divisible by the 3 processes"):
        batcher(big, process_count=3)


def test_eval_batches_cover_each_example_once_with_zero_weight_padding(big):
    n, bs = len(big), 48
    evals = batcher(big, batch_size=bs)
    batches = list(evals.eval_batches())
    assert len(batches) == evals.num_eval_batches == 11
    index = np.concatenate([b["index"] for b in batches])
    weight = np.concatenate([b["example_weight"] for b in batches])
    assert sorted(index[index >= 0].tolist()) == list(range(n))
    assert ((index == -1) == (weight == 0)).all() and (weight == 0).sum() == 11 * bs - n
    last = batches[-1]
    pad_rows = last["index"] == -1
    assert (last["input_ids"][pad_rows] == PAD).all() and (
        last["attention_mask"][pad_rows].sum(1) == 1
    ).all()
    for batch in batches:
        real = batch["index"] >= 0
        np.testing.assert_array_equal(batch["labels"][real], big.labels[batch["index"][real]])
        np.testing.assert_array_equal(
            batch["attention_mask"][real].sum(1),
            [len(big.input_ids[i]) for i in batch["index"][real]],
        )
        assert batch["input_ids"].shape[1] in (8, 16, 32, 48)
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths) and widths[0] < 48  # shortest first: tight padding
    parts = [
        list(batcher(big, batch_size=bs, process_index=p, process_count=2).eval_batches())
        for p in range(2)
    ]
    for whole, p0, p1 in zip(batches, *parts, strict=True):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), whole[key])


def test_too_few_examples_for_a_batch(big):
    batches = batcher(first_examples(big, 33))
    assert batches.steps_per_epoch == 2 and batches.num_eval_batches == 3
    with pytest.raises(
        DataError, match="3 training examples are fewer than one batch of train.batch_size=16"
    ):
        batcher(first_examples(big, 3)).steps_per_epoch
