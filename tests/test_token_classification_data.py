"""Token classification data and metrics: CoNLL/JSON reading, word-piece label alignment (first
piece, all pieces), windows of long sentences put back together per word, batches, and entity
metrics against seqeval and hand-computed values. No model is run here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_tokenizer

from jaxtl import metrics
from jaxtl.config import TokenClassificationDataConfig
from jaxtl.data import token_classification as tok_data
from jaxtl.errors import DataError

LABELS = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"), lowercase=False)


def conll(tmp_path, text: str, name: str = "train.conll"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_conll_reading_skips_docstart_and_splits_at_blank_lines(tmp_path):
    path = conll(tmp_path, "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
                           "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")
    s = tok_data.read_conll(path, 0, -1, tags=True)
    assert s.words == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert s.tags == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert s.where == [f"{path}, line 3", f"{path}, line 7"]
    pos = tok_data.read_conll(path, 0, 1, tags=True)  # the tag column is configurable
    assert pos.tags == [["NNP", "VBZ"], ["NNP", "NNP"]]
    untagged = conll(tmp_path, "Hello\nworld\n\nBye\n", "predict.txt")
    assert tok_data.read_conll(untagged, 0, -1, tags=None).tags is None


def test_json_and_jsonl_records(tmp_path):
    cfg = TokenClassificationDataConfig(train_file="x", tokens_key="words", tags_key="labels",
                                        labels=list(LABELS))
    rows = [{"words": ["Ana", "in", "Rome"], "labels": [3, 0, 1]},
            {"words": ["ok"], "labels": ["O"]}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    for name in ("a.jsonl", "a.json"):
        s = tok_data.read_sentences(str(tmp_path / name), cfg, tags=True)
        assert s.words == [["Ana", "in", "Rome"], ["ok"]]
        assert s.tags == [["B-PER", "O", "B-LOC"], ["O"]]  # ids named by data.labels


def test_first_piece_alignment_by_hand(tokenizer):
    # "Rome" -> R ##o ##m ##e (the tiny vocabulary has no "Rome"); "the", "in" are whole words.
    s = tok_data.Sentences("mem", [["Rome", "is", "the", "city"]], [["B-LOC", "O", "O", "O"]], ["mem, line 1"])
    split = tok_data.tokenize("train", s, tokenizer, LABELS, max_seq_length=32)
    pieces = tokenizer.convert_ids_to_tokens(split.input_ids[0].tolist())
    assert pieces[:6] == ["[CLS]", "R", "##o", "##m", "##e", "is"]
    # [CLS] R ##o ##m ##e is the c ##i ##t ##y [SEP]
    assert split.tag_ids[0].tolist() == [-100, 1, -100, -100, -100, 0, 0, 0, -100, -100, -100, -100]
    assert split.word_starts[0].tolist() == [1, 5, 6, 7]
    every = tok_data.tokenize("train", s, tokenizer, LABELS, max_seq_length=32, label_all_pieces=True)
    # later pieces of a B-LOC word are I-LOC (2), as HF's run_ner with label_all_tokens
    assert every.tag_ids[0].tolist() == [-100, 1, 2, 2, 2, 0, 0, 0, 0, 0, 0, -100]


def test_long_sentences_become_windows_and_come_back_per_word(tokenizer):
    words = ["Rome", "is", "the", "city", "of", "Ana", "and", "Bo"]
    tags = ["B-LOC", "O", "O", "O", "O", "B-PER", "O", "B-PER"]
    # pieces per word: 4 1 1 4 1 3 1 2 = 17; max_seq_length 8 leaves 6 per window ([CLS], [SEP])
    s = tok_data.Sentences("mem", [words, ["ok"]], [tags, ["O"]], ["mem, line 1", "mem, line 10"])
    split = tok_data.tokenize("train", s, tokenizer, LABELS, max_seq_length=8)
    assert split.sentence.tolist() == [0, 0, 0, 1]
    assert split.first_word.tolist() == [0, 3, 5, 0]  # [Rome is the] [city of] [Ana and Bo] [ok]
    assert all(len(ids) <= 8 for ids in split.input_ids)
    covered = sum(len(w) for w in split.word_starts[:3])
    assert covered == len(words)  # every word in exactly one window, none cut
    # labels survive: one labelled position per word, the word's tag
    gold = [LABELS.index(t) for t in tags]
    labelled = np.concatenate([t[t != -100] for t in split.tag_ids[:3]]).tolist()
    assert labelled == gold
    # predictions placed at each word's first piece come back in word order
    predicted = np.full((len(split), 8), -1)
    for i, tags_L in enumerate(split.tag_ids):
        predicted[i, : len(tags_L)] = np.where(tags_L == -100, 4, tags_L)
    assert tok_data.word_predictions(split, predicted) == [gold, [0]]


def test_a_word_longer_than_a_window_is_an_error(tokenizer):
    s = tok_data.Sentences("mem", [["Supercalifragilistic"]], [["O"]], ["f.conll, line 3"])
    with pytest.raises(DataError, match=r"f.conll, line 3 \(word 1\).*max_seq_length"):
        tok_data.tokenize("train", s, tokenizer, LABELS, max_seq_length=6)


def test_batches_pad_labels_with_ignore_and_fill_the_last_eval_batch(tokenizer):
    s = tok_data.Sentences("mem", [["Ana", "is", "in", "Rome"], ["ok"], ["the", "city"]],
                           [["B-PER", "O", "O", "B-LOC"], ["O"], ["O", "O"]], ["a", "b", "c"])
    split = tok_data.tokenize("validation", s, tokenizer, LABELS, max_seq_length=32)
    batcher = tok_data.TokenClassificationBatcher(split, batch_size=2, bucket_sizes=[4, 8, 16])
    batches = list(batcher.eval_batches())
    assert len(batches) == 2
    last = batches[-1]
    assert last["index"].tolist()[1] == -1 and last["example_weight"].tolist() == [1.0, 0.0]
    assert (last["labels"][1] == -100).all()  # the padding row has no label
    for batch in batches:
        assert batch["labels"].shape == batch["input_ids"].shape
        pads = batch["attention_mask"] == 0
        assert (batch["labels"][pads] == -100).all()
    seen = {int(i) for b in batches for i in b["index"] if i >= 0}
    assert seen == {0, 1, 2}
    train = tok_data.TokenClassificationBatcher(split, batch_size=2, bucket_sizes=[4, 8, 16])
    assert train.train_batch(0)["labels"].dtype == np.int32


def test_unknown_tag_in_validation_is_named(tmp_path, tokenizer):
    train = conll(tmp_path, "Ana B-PER\nruns O\n")
    valid = conll(tmp_path, "Bo B-PER\n\nin O\nRome B-LOC\n", "valid.conll")
    cfg = TokenClassificationDataConfig(train_file=str(train), validation_file=str(valid))
    with pytest.raises(DataError, match=r"valid.conll, line 4: tag 'B-LOC'"):
        tok_data.load_token_classification_data(cfg, tokenizer, max_positions=512)


def test_tags_sort_o_first_then_by_type():
    assert tok_data.sort_tags(["I-PER", "B-LOC", "O", "B-PER", "I-LOC"]) == LABELS


# ---------------------------------------------------------------------------- metrics


def test_entity_metrics_match_seqeval_and_hand_counts():
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O", "O"]]
    # gold entities: PER(0-1), LOC(3), LOC(0-1) = 3; predicted: PER(0-1), LOC(0) = 2; correct: 1
    result = metrics.token_classification_metrics(gold, pred)
    assert result["entity_precision"] == pytest.approx(1 / 2)
    assert result["entity_recall"] == pytest.approx(1 / 3)
    assert result["entity_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert result["token_accuracy"] == pytest.approx(5 / 7)
    assert result["entity_f1"] == pytest.approx(f1_score(gold, pred))
    assert result["entity_precision"] == pytest.approx(precision_score(gold, pred))
    assert result["entity_recall"] == pytest.approx(recall_score(gold, pred))


def test_iobes_scheme_reads_single_and_end_tags():
    gold = [["S-PER", "O", "B-LOC", "E-LOC"]]
    pred = [["S-PER", "O", "B-LOC", "I-LOC"]]  # the LOC entity never ends: not an entity in IOBES
    iobes = metrics.token_classification_metrics(gold, pred, scheme="IOBES")
    assert iobes["entity_precision"] == 1.0 and iobes["entity_recall"] == 0.5
    assert metrics.token_classification_metrics(gold, gold, scheme="IOBES")["entity_f1"] == 1.0


def test_plain_tags_get_token_accuracy_only():
    result = metrics.token_classification_metrics([["NOUN", "VERB"]], [["NOUN", "NOUN"]])
    assert result == {"token_accuracy": 0.5}
    assert metrics.has_entity_tags(LABELS) and not metrics.has_entity_tags(["NOUN", "VERB", "O"])


def test_hf_dataset_with_classlabel_tags(tmp_path, tokenizer):
    """An HF dataset folder (as `datasets` writes conll2003/wnut_17: tokens + Sequence(ClassLabel))."""
    import datasets

    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(LABELS))),
    })
    rows = {"tokens": [["Ana", "in", "Rome"], [], ["ok"]], "ner_tags": [[3, 0, 1], [], [0]]}
    folder = tmp_path / "hubdata"
    (folder / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    cfg = TokenClassificationDataConfig(dataset=str(folder), max_seq_length=16)
    data = tok_data.load_token_classification_data(cfg, tokenizer, max_positions=64)
    assert data.train.sentences.tags == [["B-PER", "O", "B-LOC"], ["O"]]  # the empty row skipped
    assert data.labels == LABELS
    assert data.validation is not None and len(data.validation) == 2
