"""BERT pretraining data: text reading, NSP instances, masking, batches, determinism, errors.

The test corpus uses every word once ("w0", "w1", ... in order), so any token id names the one
place in the corpus it came from, and a row can be traced back to its documents and sentences.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import transformers

from jaxtl.config import PretrainDataConfig
from jaxtl.data import pretraining as pt
from jaxtl.data.batching import PretrainingBatcher
from jaxtl.data.masking import mask_tokens
from jaxtl.data.text import read_documents
from jaxtl.errors import DataError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NUM_WORDS = 6000
STEMS = [f"p{i}" for i in range(200)]
PIECES = [f"##q{i}" for i in range(10)]
L = 48


def make_tokenizer(extra_specials=True):
    tokens = (SPECIALS if extra_specials else ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]) + [
        f"w{i}" for i in range(NUM_WORDS)
    ]
    vocab = {t: i for i, t in enumerate(tokens + STEMS + PIECES)}
    kwargs = {} if extra_specials else {"mask_token": None}
    return transformers.BertTokenizer(vocab=vocab, **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def unique_corpus(num_docs=40, seed=0):
    """Documents of one-sentence lines, every word used once; returns (text, docs as word lists)."""
    rng = np.random.default_rng(seed)
    counter, docs = 0, []
    for _ in range(num_docs):
        doc = []
        for _ in range(rng.integers(6, 16)):
            n = int(rng.integers(3, 11))
            doc.append([f"w{counter + k}" for k in range(n)])
            counter += n
        docs.append(doc)
    assert counter < NUM_WORDS
    text = "\n\n".join("\n".join(" ".join(s) for s in doc) for doc in docs) + "\n"
    return text, docs


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    text, docs = unique_corpus()
    return write(tmp, "corpus.txt", text), docs


def config(path, **kw):
    kw.setdefault("max_seq_length", L)
    kw.setdefault("validation_fraction", 0.0)
    return PretrainDataConfig(train_files=[str(path)], **kw)


@pytest.fixture(scope="module")
def nsp_data(corpus, tokenizer):
    train, val = pt.load_pretraining_data(config(corpus[0]), tokenizer, model_vocab_size=10000)
    assert val is None
    return train


def train_batch(data, step, *, batch_size, seed, **processes):
    """Batch ``step`` of a fresh batcher (so every call also checks that nothing is cached)."""
    return PretrainingBatcher(data, batch_size=batch_size, seed=seed, **processes).train_batch(step)


def eval_batches(data, *, batch_size, seed, **processes):
    return PretrainingBatcher(data, batch_size=batch_size, seed=seed, **processes).eval_batches()


def unmasked(batch):
    """input_ids with the masked positions' original tokens put back."""
    ids = batch["input_ids"].copy()
    for row in range(len(ids)):
        valid = batch["masked_weights"][row] > 0
        ids[row, batch["masked_positions"][row][valid]] = batch["masked_labels"][row][valid]
    return ids


def chosen_mask(batch):
    chosen = np.zeros(batch["input_ids"].shape, dtype=bool)
    for row in range(len(chosen)):
        valid = batch["masked_weights"][row] > 0
        chosen[row, batch["masked_positions"][row][valid]] = True
    return chosen


# ---------------------------------------------------------------------------------- reading


def test_read_documents_blank_lines_sentences_and_globs(tmp_path):
    write(tmp_path, "a.txt", "First line. Second sentence here!\nThird line\n\n\n  \nNew doc.\n")
    write(tmp_path, "b.txt", "\ufeffOther file, one sentence\nMr. Smith met J. Doe. Then left.")
    docs = read_documents(PretrainDataConfig(train_files=[str(tmp_path / "*.txt")]))
    assert docs == [
        ["First line.", "Second sentence here!", "Third line"],
        ["New doc."],
        ["Other file, one sentence", "Mr. Smith met J. Doe.", "Then left."],
    ]


def test_read_documents_from_hf_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder, "train.jsonl", '{"body": "One. Two here."}\n{"body": "Three\\nFour"}\n')
    cfg = PretrainDataConfig(dataset=str(folder), text_column="body")
    assert read_documents(cfg) == [["One.", "Two here."], ["Three", "Four"]]
    with pytest.raises(DataError, match="text_column='text'.*columns: body"):
        read_documents(dataclasses.replace(cfg, text_column="text"))


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("missing.txt", None, r"missing\.txt does not exist"),
        ("empty.txt", "\n\n  \n", r"empty\.txt: no text"),
        ("one.txt", "just one sentence\n", r"one\.txt: .*one sentence.*next-sentence prediction"),
        (
            "latin.txt",
            b"ok\ncaf\xe9\n",
            r"latin\.txt: not valid UTF-8: byte 0xe9 at offset 6 \(line 2\)",
        ),
    ],
)
def test_bad_corpus_raises_data_error_naming_it(tmp_path, tokenizer, name, content, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        pt.load_pretraining_data(config(path), tokenizer, model_vocab_size=10000)


def test_single_sentence_is_fine_without_nsp_and_glob_must_match(tmp_path, tokenizer):
    path = write(tmp_path, "one.txt", "w1 w2 w3\n")
    train, _ = pt.load_pretraining_data(config(path, nsp=False), tokenizer, model_vocab_size=10000)
    assert train.num_instances(0, 0) == 1
    with pytest.raises(DataError, match=r"nothing\*\.txt' matches no files"):
        read_documents(PretrainDataConfig(train_files=[str(tmp_path / "nothing*.txt")]))


def test_tokenizer_must_fit_model_and_have_bert_specials(corpus, tokenizer):
    with pytest.raises(DataError, match=r"6215 tokens.*only 6000"):
        pt.load_pretraining_data(config(corpus[0]), tokenizer, model_vocab_size=6000)
    with pytest.raises(DataError, match=r"no \[MASK\] token"):
        pt.load_pretraining_data(config(corpus[0]), make_tokenizer(False), model_vocab_size=10000)


def test_validation_split_holds_out_whole_documents(corpus, tokenizer):
    cfg = config(corpus[0], validation_fraction=0.25, split_seed=7)
    train, val = pt.load_pretraining_data(cfg, tokenizer, model_vocab_size=10000)
    assert len(val.documents) == 10 and len(train.documents) == 30
    assert not set(train.tokens.tolist()) & set(val.tokens.tolist())
    again, _ = pt.load_pretraining_data(cfg, tokenizer, model_vocab_size=10000)
    np.testing.assert_array_equal(again.tokens, train.tokens)
    other, _ = pt.load_pretraining_data(
        dataclasses.replace(cfg, split_seed=8), tokenizer, model_vocab_size=10000
    )
    assert not np.array_equal(other.tokens, train.tokens)


# ---------------------------------------------------------------------------------- NSP


def test_truncation_matches_the_original_token_by_token_loop():
    for len_a in range(1, 30):
        for len_b in range(1, 30):
            for max_tokens in (2, 5, 17, 40):
                a, b = len_a, len_b
                while a + b > max_tokens:  # truncate_seq_pair's choice of side
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert pt._truncation(len_a, len_b, max_tokens) == (len_a - a, len_b - b)


def test_nsp_pairs_are_true_continuations_or_other_documents(nsp_data, corpus, tokenizer):
    _, docs = corpus
    doc_texts = [" " + " ".join(w for s in doc for w in s) + " " for doc in docs]
    sentence_starts = {s[0] for doc in docs for s in doc}
    sentence_ends = {s[-1] for doc in docs for s in doc}
    special = nsp_data.special
    labels = []
    for step in range(12):
        batch = train_batch(nsp_data, step, batch_size=64, seed=3)
        ids = unmasked(batch)
        for row in range(64):
            real = ids[row][batch["attention_mask"][row] == 1]
            assert len(real) <= L
            assert real[0] == special.cls_id and real[-1] == special.sep_id
            seps = np.flatnonzero(real == special.sep_id)
            assert len(seps) == 2, real
            np.testing.assert_array_equal(
                batch["token_type_ids"][row],
                np.r_[np.zeros(seps[0] + 1), np.ones(seps[1] - seps[0]), np.zeros(L - len(real))],
            )
            assert (ids[row][len(real) :] == special.pad_id).all()
            assert batch["attention_mask"][row][: len(real)].all()
            words_a = tokenizer.decode(real[1 : seps[0]]).split()
            words_b = tokenizer.decode(real[seps[0] + 1 : seps[1]]).split()
            text_a, text_b = f" {' '.join(words_a)} ", f" {' '.join(words_b)} "
            doc_a = [d for d, t in enumerate(doc_texts) if text_a in t]
            doc_b = [d for d, t in enumerate(doc_texts) if text_b in t]
            assert len(doc_a) == 1 and len(doc_b) == 1, (text_a, text_b)  # contiguous text
            truncated = len(real) == L  # a pair is cut to exactly max_seq_length
            if not truncated:  # whole sentences
                assert words_a[0] in sentence_starts and words_a[-1] in sentence_ends
                assert words_b[0] in sentence_starts and words_b[-1] in sentence_ends
            label = batch["nsp_labels"][row]
            labels.append(label)
            if label == 0:
                assert doc_a == doc_b
                text = doc_texts[doc_a[0]]
                end_a = text.index(text_a) + len(text_a) - 1
                gap = text[end_a : text.index(text_b) + 1].split()
                # B follows A; only tokens cut by truncation (< one sentence) may lie between.
                assert text.index(text_b) >= end_a and len(gap) < (10 if truncated else 1)
            else:
                assert doc_a != doc_b
    assert 0.4 < np.mean(labels) < 0.62, np.mean(labels)


def test_nsp_epoch_uses_every_sentence_of_each_document(nsp_data):
    # A random B's unused sentences go back to their document, so an epoch's A and true-B
    # segments hold every token but the few that truncation cut.
    count = nsp_data.num_instances(0, 0)
    batch = train_batch(nsp_data, 0, batch_size=count, seed=0)
    ids, types = unmasked(batch), batch["token_type_ids"]
    own = (types == 0) | (batch["nsp_labels"][:, None] == 0)
    covered = ids[own & (batch["attention_mask"] == 1)]
    covered = covered[~np.isin(covered, nsp_data.special.never_mask)]
    assert len(np.unique(covered)) == len(covered)  # and each of them once
    assert len(covered) > 0.95 * nsp_data.num_tokens, (len(covered), nsp_data.num_tokens)


def test_short_sequences_and_length_bounds(corpus, tokenizer):
    cfg = config(corpus[0], short_seq_prob=1.0, max_seq_length=64)
    data, _ = pt.load_pretraining_data(cfg, tokenizer, model_vocab_size=10000)
    batch = train_batch(data, 0, batch_size=64, seed=0)
    lengths = batch["attention_mask"].sum(axis=1)
    assert batch["input_ids"].shape == (64, 64)
    assert lengths.max() <= 64 and np.median(lengths) < 50  # shorter targets were used
    full, _ = pt.load_pretraining_data(
        dataclasses.replace(cfg, short_seq_prob=0.0), tokenizer, model_vocab_size=10000
    )
    assert np.median(train_batch(full, 0, batch_size=64, seed=0)["attention_mask"].sum(1)) > 55


# ---------------------------------------------------------------------------------- masking


def test_masking_statistics(nsp_data):
    special, cfg = nsp_data.special, nsp_data.cfg
    row = np.full(L, special.pad_id, dtype=np.int32)
    row[0], row[20], row[39] = special.cls_id, special.sep_id, special.sep_id
    row[1:20] = np.arange(100, 119)
    row[21:39] = np.arange(200, 218)
    row[5] = 1  # [UNK]: never masked either
    eligible = np.ones(L, dtype=bool)
    eligible[[0, 5, 20]] = False
    eligible[39:] = False
    P = nsp_data.max_predictions
    assert P == 9  # ceil(0.15 * 48) + 1
    rng = np.random.default_rng(0)
    counts = {"mask": 0, "random": 0, "same": 0}
    per_position = np.zeros(L)
    for _ in range(3000):
        masked, positions, labels, weights = mask_tokens(
            row, rng, special=special, cfg=cfg, max_predictions=P
        )
        chosen = positions[weights > 0]
        assert len(chosen) == round(0.15 * eligible.sum())  # 36 eligible -> 5
        assert (np.diff(chosen) > 0).all() and eligible[chosen].all()
        assert (weights[len(chosen) :] == 0).all() and (positions[len(chosen) :] == 0).all()
        np.testing.assert_array_equal(labels[: len(chosen)], row[chosen])
        untouched = np.ones(L, dtype=bool)
        untouched[chosen] = False
        np.testing.assert_array_equal(masked[untouched], row[untouched])
        per_position[chosen] += 1
        new = masked[chosen]
        counts["mask"] += int((new == special.mask_id).sum())
        counts["same"] += int((new == row[chosen]).sum())
        replaced = new[(new != special.mask_id) & (new != row[chosen])]
        counts["random"] += len(replaced)
        assert not np.isin(replaced, special.never_mask).any() and (replaced < 6215).all()
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.02, counts
    assert abs(counts["random"] / total - 0.1) < 0.015, counts
    assert abs(counts["same"] / total - 0.1) < 0.015, counts
    # every eligible position is chosen about equally often, and nothing else ever
    assert (per_position[~eligible] == 0).all()
    rate = per_position[eligible] / 3000
    assert abs(rate.mean() - 5 / 36) < 1e-9 and rate.min() > 0.1 and rate.max() < 0.18


def test_batch_masking_fraction_and_never_special(nsp_data):
    chosen_total = eligible_total = 0
    for step in range(5):
        batch = train_batch(nsp_data, step, batch_size=64, seed=1)
        ids, chosen = unmasked(batch), chosen_mask(batch)
        eligible = ~np.isin(ids, nsp_data.special.never_mask)
        assert not (chosen & ~eligible).any()  # never [CLS]/[SEP]/padding
        assert (batch["attention_mask"][chosen] == 1).all()
        np.testing.assert_array_equal(chosen.sum(1), np.rint(0.15 * eligible.sum(1)))
        chosen_total += chosen.sum()
        eligible_total += eligible.sum()
    assert abs(chosen_total / eligible_total - 0.15) < 0.01


def test_whole_word_masking_masks_whole_words(tmp_path, tokenizer):
    rng = np.random.default_rng(0)
    lines = []
    for d in range(30):
        for _ in range(8):  # a mix of one-piece and two/three-piece words
            words = []
            for _ in range(rng.integers(4, 10)):
                if rng.random() < 0.5:
                    words.append(f"w{rng.integers(NUM_WORDS)}")
                else:  # p12q3q7 -> p12 ##q3 ##q7
                    pieces = rng.integers(0, 10, rng.integers(1, 3))
                    words.append(f"p{rng.integers(200)}" + "".join(f"q{k}" for k in pieces))
            lines.append(" ".join(words))
        lines.append("")
    path = write(tmp_path, "wwm.txt", "\n".join(lines))
    for whole_word in (True, False):
        cfg = config(path, whole_word_mask=whole_word, nsp=False)
        data, _ = pt.load_pretraining_data(cfg, tokenizer, model_vocab_size=10000)
        split_words = chosen_pieces = 0
        fractions = []
        for step in range(4):
            batch = train_batch(data, step, batch_size=32, seed=0)
            ids, chosen = unmasked(batch), chosen_mask(batch)
            continuation = data.special.continuation[ids]
            special = np.isin(ids, data.special.never_mask)
            # word number of every token; a row may begin inside a word, after [CLS]
            after_special = np.pad(special[:, :-1], ((0, 0), (1, 0)))
            word = np.cumsum(~continuation | special | after_special, axis=1)
            for r in range(len(ids)):
                for w in np.unique(word[r][chosen[r]]):
                    in_word = word[r] == w
                    split_words += not chosen[r][in_word].all()
                    chosen_pieces += continuation[r][in_word].any()
            eligible = ~special
            budget = np.rint(0.15 * eligible.sum(1))
            assert (chosen.sum(1) <= budget).all()  # a word that would overshoot is skipped
            fractions.append(chosen.sum() / budget.sum())
        assert chosen_pieces > 50  # multi-piece words were masked ...
        if whole_word:
            assert split_words == 0  # ... always in one piece
            assert np.mean(fractions) > 0.9  # ... and the budget was nearly always filled
        else:
            assert split_words > 20  # token masking does split them: the check can fail


# ---------------------------------------------------------------------------------- batches


def test_batch_shapes_and_types(nsp_data):
    batch = train_batch(nsp_data, 0, batch_size=16, seed=0)
    P = nsp_data.max_predictions
    expected = {
        "input_ids": ((16, L), np.int32),
        "attention_mask": ((16, L), np.int32),
        "token_type_ids": ((16, L), np.int32),
        "masked_positions": ((16, P), np.int32),
        "masked_labels": ((16, P), np.int32),
        "masked_weights": ((16, P), np.float32),
        "nsp_labels": ((16,), np.int32),
        "example_weight": ((16,), np.float32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_are_a_pure_function_of_seed_and_step(corpus, tokenizer, nsp_data):
    per_epoch = nsp_data.steps_per_epoch(16)
    assert per_epoch == nsp_data.num_instances(0, 0) // 16
    late = per_epoch * 3 + 2  # in epoch 3
    first = train_batch(nsp_data, late, batch_size=16, seed=5)
    # a fresh object (as after a restart) with no cached epochs gives the same batch
    fresh, _ = pt.load_pretraining_data(config(corpus[0]), tokenizer, model_vocab_size=10000)
    assert_batches_equal(first, train_batch(fresh, late, batch_size=16, seed=5))
    other_step = train_batch(nsp_data, late + 1, batch_size=16, seed=5)
    assert not np.array_equal(first["input_ids"], other_step["input_ids"])
    assert not np.array_equal(first["masked_positions"], other_step["masked_positions"])
    other_seed = train_batch(nsp_data, late, batch_size=16, seed=6)
    assert not np.array_equal(first["input_ids"], other_seed["input_ids"])


def test_the_same_row_is_masked_anew_at_every_step(tmp_path, tokenizer):
    path = write(tmp_path, "row.txt", " ".join(f"w{i}" for i in range(40)) + "\n")
    data, _ = pt.load_pretraining_data(config(path, nsp=False), tokenizer, model_vocab_size=10000)
    assert data.num_instances(0, 0) == 1 and data.steps_per_epoch(1) == 1
    batches = [train_batch(data, step, batch_size=1, seed=0) for step in range(4)]
    for b in batches[1:]:
        np.testing.assert_array_equal(unmasked(b), unmasked(batches[0]))
    assert len({b["masked_positions"].tobytes() for b in batches}) == 4


def test_an_epoch_visits_every_instance_once(nsp_data):
    per_epoch, count = nsp_data.steps_per_epoch(8), nsp_data.num_instances(0, 0)
    rows = [unmasked(train_batch(nsp_data, s, batch_size=8, seed=0)) for s in range(per_epoch)]
    rows = np.concatenate(rows)
    assert len({r.tobytes() for r in rows}) == len(rows) == per_epoch * 8 > count - 8


def test_two_processes_concatenate_to_one(nsp_data):
    whole = train_batch(nsp_data, 7, batch_size=8, seed=2)
    parts = [
        train_batch(nsp_data, 7, batch_size=8, seed=2, process_index=i, process_count=2)
        for i in range(2)
    ]
    assert_batches_equal(whole, {k: np.concatenate([p[k] for p in parts]) for k in whole})
    whole_eval = list(eval_batches(nsp_data, batch_size=8, seed=2))
    eval_parts = [
        list(eval_batches(nsp_data, batch_size=8, seed=2, process_index=i, process_count=2))
        for i in range(2)
    ]
    for b, (p0, p1) in zip(whole_eval, zip(*eval_parts), strict=True):
        assert_batches_equal(b, {k: np.concatenate([p0[k], p1[k]]) for k in b})
    with pytest.raises(DataError, match="batch size 9 is not divisible by the 2 processes"):
        train_batch(nsp_data, 0, batch_size=9, seed=0, process_index=0, process_count=2)


def test_eval_batches_cover_each_instance_once_with_padding(nsp_data):
    total = len(nsp_data.eval_instances())
    assert total % 16  # so the last batch is padded
    batches = list(eval_batches(nsp_data, batch_size=16, seed=0))
    num_batches = PretrainingBatcher(nsp_data, batch_size=16).num_eval_batches
    assert len(batches) == num_batches == -(-total // 16)
    weights = np.concatenate([b["example_weight"] for b in batches])
    assert weights.sum() == total and (weights[total:] == 0).all()
    index = np.concatenate([b["index"] for b in batches])  # as classification's: -1 pads
    np.testing.assert_array_equal(index, np.r_[np.arange(total), -np.ones(len(index) - total)])
    last = batches[-1]
    assert (last["masked_weights"][last["example_weight"] == 0] == 0).all()
    assert (last["attention_mask"].sum(1) > 0).all()  # padding rows are real rows, weighted 0
    # the same rows and masks whatever the batch size; masks follow the seed
    rows16 = np.concatenate([b["input_ids"] for b in batches])[:total]
    rows7 = np.concatenate([b["input_ids"] for b in eval_batches(nsp_data, batch_size=7, seed=0)])
    np.testing.assert_array_equal(rows16, rows7[:total])
    other = np.concatenate([b["input_ids"] for b in eval_batches(nsp_data, batch_size=16, seed=1)])
    assert not np.array_equal(rows16, other[:total])


def test_mlm_only_packs_full_rows_covering_the_corpus_once(corpus, tokenizer):
    data, _ = pt.load_pretraining_data(
        config(corpus[0], nsp=False), tokenizer, model_vocab_size=10000
    )
    special = data.special
    count = data.num_instances(0, 0)
    assert count == -(-(data.num_tokens + len(data.documents) - 1) // (L - 2))
    batches = [train_batch(data, s, batch_size=count, seed=0) for s in range(2)]
    ids = unmasked(batches[0])
    lengths = batches[0]["attention_mask"].sum(1)
    assert (np.sort(lengths)[1:] == L).all()  # every row full but the corpus's last one
    assert (ids[:, 0] == special.cls_id).all()
    assert (ids[np.arange(count), lengths - 1] == special.sep_id).all()
    assert (batches[0]["token_type_ids"] == 0).all() and (batches[0]["nsp_labels"] == 0).all()
    words = ids[:, 1:-1][batches[0]["attention_mask"][:, 1:-1] == 1]
    words = words[words != special.sep_id]
    assert sorted(words.tolist()) == sorted(data.tokens.tolist())  # each token exactly once
    # document boundaries inside a row are marked with [SEP]
    real_seps = ((ids == special.sep_id) & (batches[0]["attention_mask"] == 1)).sum()
    assert real_seps - count == len(data.documents) - 1
    assert not np.array_equal(batches[0]["input_ids"], batches[1]["input_ids"])  # reshuffled


def test_long_lines_are_cut_into_pieces_not_lost(tmp_path, tokenizer):
    path = write(tmp_path, "long.txt", " ".join(f"w{i}" for i in range(200)) + "\nw300 w301\n")
    data, _ = pt.load_pretraining_data(
        config(path, max_seq_length=32), tokenizer, model_vocab_size=10000
    )
    assert [len(s) for s in data.documents[0]] == [29] * 6 + [26, 2]


def test_unigram_baseline_accuracy(tmp_path, tokenizer):
    rng = np.random.default_rng(0)
    lines = [
        " ".join(["w7"] * 3 + [f"w{k}" for k in rng.integers(100, 200, 5)]) for _ in range(200)
    ]
    text = "\n".join(line + ("\n" if i % 10 == 9 else "") for i, line in enumerate(lines))
    cfg = config(write(tmp_path, "freq.txt", text), validation_fraction=0.3)
    train, val = pt.load_pretraining_data(cfg, tokenizer, model_vocab_size=10000)
    accuracy = pt.unigram_baseline_accuracy(train, eval_batches(val, batch_size=16, seed=0))
    w7 = tokenizer.convert_tokens_to_ids("w7")
    hits = total = 0
    for batch in eval_batches(val, batch_size=16, seed=0):
        weights = batch["masked_weights"] * batch["example_weight"][:, None]
        hits += (weights * (batch["masked_labels"] == w7)).sum()
        total += weights.sum()
    assert accuracy == pytest.approx(hits / total)
    assert accuracy == pytest.approx(3 / 8, abs=0.06)  # w7 is 3 of every 8 maskable tokens
