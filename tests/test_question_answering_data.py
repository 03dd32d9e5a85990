"""Extractive QA data: SQuAD files, windows and answer spans (offsets -> spans -> text on real
sentences with punctuation and unicode), batches, post-processing on hand-made logits, and the
official SQuAD EM / F1 on cases worked out by hand.

The tokenizer is the real all-MiniLM-L6-v2 WordPiece one (an uncased BERT vocabulary of 30522
entries, the ``asset:all-MiniLM-L6-v2`` jaxtl caches), so accents, dashes and apostrophes split as
in a real run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxtl import metrics
from jaxtl.data import question_answering as qa
from jaxtl.errors import DataError


@pytest.fixture(scope="module")
def tokenizer():
    from jaxtl import assets, hf

    return hf.tokenizer(assets.resolve("asset:all-MiniLM-L6-v2"))


CONTEXT = "Zoë Saldaña – the café's owner, said: \"naïve\"! It opened in 1998 (in Zürich)."
# (answer, character start) — every one ends on a token boundary of the tokenizer.
ANSWERS = [(text, CONTEXT.index(text)) for text in
           ("Zoë Saldaña", "Saldaña", "café's owner", "\"naïve\"", "1998", "Zürich", "Zürich).")]
YEAR = ("1998", CONTEXT.index("1998"))


def example(qid, question, context, answers=(), impossible=False):
    return qa.QAExample(qid, question, context, tuple(qa.Answer(t, s) for t, s in answers),
                        impossible)


def featurize(tokenizer, examples, max_seq_length=64, doc_stride=16, max_query_length=16):
    return qa.featurize(examples, tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride,
                        max_query_length=max_query_length, source="test.json")


def test_answer_offsets_are_right():
    for text, start in ANSWERS:
        assert CONTEXT[start : start + len(text)] == text


def test_hand_checked_spans(tokenizer):
    # [CLS] who ? [SEP] zoe(4) sal(5) ##dana(6) –(7) the(8) cafe(9) '(10) s(11) owner(12) ...
    f = featurize(tokenizer, [example("a", "Who?", CONTEXT, [("Saldaña", 4)]),
                              example("b", "Who?", CONTEXT, [("café's owner", 18)])])
    assert list(f.start_positions) == [5, 9] and list(f.end_positions) == [6, 12]
    assert tokenizer.convert_ids_to_tokens(f.input_ids[0][5:7].tolist()) == ["sal", "##dana"]
    assert (f.offsets[0][:4] == -1).all()  # [CLS] and the question are not context
    assert list(f.token_type_ids[0][:4]) == [0, 0, 0, 0] and f.token_type_ids[0][4] == 1


def test_offsets_spans_text_round_trip(tokenizer):
    examples = [example(str(i), "What is it?", CONTEXT, [a]) for i, a in enumerate(ANSWERS)]
    f = featurize(tokenizer, examples)
    assert len(f) == len(examples)  # one window each
    for i, (text, _) in enumerate(ANSWERS):
        s, e = f.start_positions[i], f.end_positions[i]
        assert 0 < s <= e
        assert CONTEXT[f.offsets[i][s, 0] : f.offsets[i][e, 1]] == text


def test_long_context_windows(tokenizer):
    sentences = [f"Sentence number {i} talks about topic {i}." for i in range(30)]
    context = " ".join(sentences)
    answer = "topic 17"
    start = context.index(answer)
    f = featurize(tokenizer, [example("long", "Which topic?", context, [(answer, start)])],
                  max_seq_length=48, doc_stride=12)
    assert len(f) > 5 and (f.example_index == 0).all()
    holding = []
    for w in range(len(f)):
        spans = f.offsets[w]
        context_chars = spans[spans[:, 0] >= 0]
        inside = context_chars[0, 0] <= start and context_chars[-1, 1] >= start + len(answer)
        assert len(f.input_ids[w]) <= 48
        if inside:
            holding.append(w)
            s, e = f.start_positions[w], f.end_positions[w]
            assert context[spans[s, 0] : spans[e, 1]] == answer
        else:
            assert f.start_positions[w] == f.end_positions[w] == 0  # [CLS]
    assert holding  # the stride makes at least one window hold the whole answer
    # consecutive windows overlap by doc_stride context tokens
    first, second = (f.offsets[w][f.offsets[w][:, 0] >= 0] for w in (0, 1))
    assert (first[-12:] == second[:12]).all()


def test_unanswerable_and_cut_question(tokenizer):
    question = " ".join(["why"] * 40)
    f = featurize(tokenizer, [example("v2", "Who?", CONTEXT, impossible=True),
                              example("long-q", question, CONTEXT, [YEAR])],
                  max_query_length=10)
    assert f.start_positions[0] == f.end_positions[0] == 0
    # [CLS] + 10 question tokens + [SEP], then the context
    assert f.token_type_ids[1].tolist().index(1) == 12
    assert CONTEXT[f.offsets[1][f.start_positions[1], 0] : f.offsets[1][f.end_positions[1], 1]] == "1998"


def squad_file(tmp_path, qas, context=CONTEXT):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [
        {"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}), encoding="utf-8")
    return path


def test_read_squad_file(tmp_path):
    path = squad_file(tmp_path, [
        {"id": "q1", "question": "Who?", "answers": [{"text": "Zoë Saldaña", "answer_start": 0},
                                                      {"text": "Saldaña", "answer_start": 4}]},
        {"id": "q2", "question": "When?", "answers": [], "is_impossible": True},
    ])
    examples = qa.read_squad_file(path)
    assert [e.id for e in examples] == ["q1", "q2"]
    assert examples[0].answers[1] == qa.Answer("Saldaña", 4) and examples[1].is_impossible


@pytest.mark.parametrize("qa_record, message", [
    ({"id": "bad1", "question": "Who?", "answers": [{"text": "Saldaña", "answer_start": 3}]},
     "answer 'Saldaña' is not at its answer_start=3"),
    ({"id": "bad2", "answers": [{"text": "Saldaña", "answer_start": 4}]}, "missing 'question'"),
])
def test_bad_records_name_file_and_id(tmp_path, qa_record, message):
    path = squad_file(tmp_path, [qa_record])
    with pytest.raises(DataError) as e:
        qa.read_squad_file(path)
    assert str(path) in str(e.value) and qa_record["id"] in str(e.value) and message in str(e.value)


def test_missing_context_names_question(tmp_path):
    path = tmp_path / "nocontext.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"qas": [
        {"id": "q7", "question": "Who?", "answers": []}]}]}]}))
    with pytest.raises(DataError, match=r"nocontext.json: question id q7: missing 'context'"):
        qa.read_squad_file(path)


def test_question_longer_than_max_seq_length(tokenizer):
    question = " ".join(["why"] * 70)
    with pytest.raises(DataError, match=r"test.json: question id q9: the question has 70 tokens"):
        featurize(tokenizer, [example("q9", question, CONTEXT, [YEAR])], max_query_length=64)


def test_batches_pad_the_last_eval_batch(tokenizer):
    examples = [example(str(i), "Who?" if i % 2 else "When did it open?", CONTEXT, [ANSWERS[i]])
                for i in range(5)]
    f = featurize(tokenizer, examples)
    batcher = qa.QABatcher(f, batch_size=2, bucket_sizes=[16, 32, 64])
    batches = list(batcher.eval_batches())
    assert len(batches) == batcher.num_eval_batches == 3
    assert {b["input_ids"].shape[1] for b in batches} == {max(len(x) for x in f.input_ids)}
    last = batches[-1]
    assert last["index"][1] == -1 and last["example_weight"].tolist() == [1.0, 0.0]
    seen = np.concatenate([b["index"] for b in batches])
    assert sorted(seen[seen >= 0]) == list(range(5))
    for b in batches:
        for row, i in enumerate(b["index"]):
            if i >= 0:
                assert b["start_positions"][row] == f.start_positions[i]
    train = batcher.train_batch(0)
    assert train["input_ids"].shape[1] in (16, 32, 64) and "start_positions" in train


# ---------------------------------------------------------------------------- post-processing


def hand_features(windows, context="a b c d e f g h"):
    """Features whose windows are ``[CLS] q [SEP] <context tokens> [SEP]``; ``windows`` lists
    per window the (start, end) character span of each context token."""
    offsets = []
    for spans in windows:
        offsets.append(np.array([(-1, -1)] * 3 + list(spans) + [(-1, -1)], np.int64))
    ex = qa.QAExample("x", "q", context, ())
    return qa.QAFeatures("predict", "hand", [ex], [np.zeros(len(o), np.int32) for o in offsets],
                         [np.zeros(len(o), np.int32) for o in offsets],
                         np.zeros(len(offsets), np.int64), offsets,
                         np.zeros(len(offsets), np.int32), np.zeros(len(offsets), np.int32), 16, 0)


TOKENS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15)]  # a .. h


def logits(length, values):
    out = np.full(length, -10.0, np.float32)
    for index, value in values.items():
        out[index] = value
    return out


def test_best_span_rules():
    f = hand_features([TOKENS])  # positions 3..10 are a..h, 11 is [SEP]
    L = 12
    # Highest start is on the question (1): not context. Highest end (4) is before start 5.
    start = logits(L, {1: 9.0, 5: 5.0, 3: 1.0})
    end = logits(L, {4: 8.0, 6: 4.0, 10: 6.0})
    p = qa.postprocess(f, start[None], end[None], max_answer_length=30)[0]
    assert (p.text, p.start, p.end, p.score) == ("c d e f g h", 4, 15, 11.0)  # 5..10
    # max_answer_length=3 rules 5..10 out: 5..6 ("c d", 5 + 4) ties 3..4 ("a b", 1 + 8); the
    # candidate with the higher start logit comes first and wins (HF: a stable sort by score)
    p = qa.postprocess(f, start[None], end[None], max_answer_length=3)[0]
    assert (p.text, p.score) == ("c d", 9.0)
    # n_best=1: only start 1 (question) and end 4 are candidates -> no valid span
    p = qa.postprocess(f, start[None], end[None], n_best=1)[0]
    assert (p.text, p.start, p.end) == ("", -1, -1)


def test_best_span_over_windows_and_null_answer():
    # two windows: a..e and d..h (overlap d, e) at positions 3..7 of each
    f = hand_features([TOKENS[:5], TOKENS[3:]])
    L = 9
    start = np.stack([logits(L, {0: 2.0, 4: 3.0}), logits(L, {0: 1.0, 5: 4.0})])  # b | f
    end = np.stack([logits(L, {0: 2.0, 5: 3.0}), logits(L, {0: 0.5, 7: 4.0})])  # c | h
    p = qa.postprocess(f, start, end)[0]
    assert (p.text, p.score) == ("f g h", 8.0)  # window 2: f..h beats window 1's b..c (6.0)
    # v2: null score = the lowest [CLS] score over the windows = 1.0 + 0.5 = 1.5
    p = qa.postprocess(f, start, end, version_2_with_negative=True)[0]
    assert p.text == "f g h" and p.null_score_diff == pytest.approx(1.5 - 8.0)
    start[1, 0], end[1, 0] = 6.0, 5.0  # null now min(2 + 2 in window 1, 6 + 5 in window 2) = 4
    p = qa.postprocess(f, start, end, version_2_with_negative=True)[0]
    assert p.null_score_diff == pytest.approx(4.0 - 8.0) and p.text == "f g h"
    p = qa.postprocess(f, start, end, version_2_with_negative=True, null_score_diff_threshold=-5.0)[0]
    assert (p.text, p.start, p.end, p.score) == ("", -1, -1, 4.0)  # -4 > -5: no answer


# ---------------------------------------------------------------------------- SQuAD metrics


def test_normalization():
    assert metrics.normalize_answer("The  Cat's, hat!") == "cats hat"
    assert metrics.normalize_answer("an apple a day") == "apple day"
    assert metrics.normalize_answer("Theory") == "theory"  # articles only as whole words


def test_exact_and_f1_by_hand():
    # gold "the big red dog" -> [big, red, dog]; pred "a red dog barked" -> [red, dog, barked]
    # same = 2: precision 2/3, recall 2/3, F1 2/3
    assert metrics.squad_f1("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    assert metrics.squad_exact("The Dog.", "dog") == 1
    # gold [red, red, dog], pred [red, dog, dog]: Counter overlap red 1 + dog 1 = 2 -> 2/3
    assert metrics.squad_f1("red red dog", "red dog dog") == pytest.approx(2 / 3)
    result = metrics.squad_metrics(
        [["Denver Broncos", "The Broncos"], ["1998"], ["in Zürich"]],
        ["broncos", "1999", "Zürich"],
    )
    # EM: "broncos" == "broncos" (2nd gold) -> 1; 0; 0  => 33.33
    # F1: 1.0; 0.0; gold [in, zürich] pred [zürich]: P 1, R 1/2 -> 2/3  => (1 + 0 + 2/3) / 3
    assert result["exact"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert "HasAns_total" not in result


def test_v2_splits_by_hand():
    golds = [["Paris"], [], ["a"], []]  # "a" normalizes to "": a no-answer question
    preds = ["paris", "", "", "London"]
    r = metrics.squad_metrics(golds, preds)
    # HasAns: 1 question, EM 1 F1 1. NoAns: 3 questions, "" right twice, "London" wrong.
    assert (r["HasAns_total"], r["NoAns_total"]) == (1.0, 3.0)
    assert r["HasAns_exact"] == r["HasAns_f1"] == 100.0
    assert r["NoAns_exact"] == pytest.approx(200 / 3) and r["NoAns_f1"] == pytest.approx(200 / 3)
    assert r["exact"] == r["f1"] == 75.0


# ---------------------------------------------------------------------------- config


def test_config_section_checks():
    from jaxtl import config as C
    from jaxtl.errors import ConfigError

    def make(**data):
        return C.from_dict({"task": "question_answering", "model": {"pretrained": "m"},
                            "data": {"train_file": "t.json", **data}})

    d = make().data
    assert (d.max_seq_length, d.doc_stride, d.max_query_length, d.n_best, d.max_answer_length) == (
        384, 128, 64, 20, 30)
    with pytest.raises(ConfigError, match=r"data.doc_stride=317 must be below .* = 317"):
        make(doc_stride=317)
    with pytest.raises(ConfigError, match="null_score_diff_threshold is only used with"):
        make(null_score_diff_threshold=1.0)
    with pytest.raises(ConfigError, match="text_column"):
        make(text_column="x")  # a classification key is unknown here
    assert make(version_2_with_negative=True, null_score_diff_threshold=-1.5).data.null_score_diff_threshold == -1.5


def test_hub_examples_in_squad_layout():
    """An HF ``squad``/``squad_v2``-shaped split (as ``datasets`` gives it) becomes examples; an
    empty answer list is a no-answer (v2) question."""
    import datasets

    class FakeHub:
        name = "squad_v2"

        def split(self, split, what):
            return datasets.Dataset.from_dict({
                "id": ["a", "b"], "title": ["t", "t"], "context": [CONTEXT, CONTEXT],
                "question": ["Who?", "Why?"],
                "answers": [{"text": ["Saldaña"], "answer_start": [4]},
                            {"text": [], "answer_start": []}],
            })

    a, b = qa.hub_examples(FakeHub(), "validation", "validation_split")
    assert a.answers == (qa.Answer("Saldaña", 4),) and not a.is_impossible
    assert b.answers == () and b.is_impossible
