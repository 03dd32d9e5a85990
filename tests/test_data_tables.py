"""Bad data files, each one DataError line naming the file and the line/byte/column (issue 9).

Through :func:`load_classification_data`, as a user's config reaches them; the CLI catalogue of
the same files is tests/test_bad_data_cli.py.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from helpers import make_tokenizer

from jaxtl.config import FinetuneDataConfig, PretrainDataConfig
from jaxtl.data.classification import load_classification_data
from jaxtl.data.sources import binary_kind, read_text
from jaxtl.data.tables import read_table
from jaxtl.data.text import read_documents
from jaxtl.errors import DataError

GOOD = b"sentence,label\nthe movie was good,pos\nawful film,neg\nfun,pos\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def load(tok, **kw):
    return load_classification_data(
        FinetuneDataConfig(max_seq_length=32, **kw), tok, max_positions=512
    )


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# Each: file name, bytes, the pattern its DataError must match (the file name comes first).
BAD_TRAIN_FILES = [
    ("empty.csv", b"", r"empty\.csv: the file is empty"),
    ("blank.csv", b"\n  \n", r"blank\.csv: the file is empty"),
    ("header.csv", b"sentence,label\n", r"header\.csv: the file has a header but no rows"),
    (
        "latin1.csv",
        b"sentence,label\nok,pos\ncaf\xe9 noir,neg\n",
        r"latin1\.csv: not valid UTF-8: byte 0xe9 at offset 25 \(line 3\)",
    ),
    (
        "ragged.csv",
        b"sentence,label\nok,pos\nhi, there,neg\nfine,pos\n",
        r"ragged\.csv, line 3: 3 fields but the header has 2 \(sentence, label\)",
    ),
    (
        "ragged.tsv",
        b"sentence\tlabel\nok\tpos\nno label here\nfine\tpos\n",
        r"ragged\.tsv, line 3: 1 fields but the header has 2",
    ),
    ("nolabel.csv", b"sentence,stars\nok,5\nbad,1\n", r"nolabel\.csv: no column 'label'.*'stars'"),
    (
        "emptylabel.csv",
        b"sentence,label\nok,pos\nhi,\n",
        r"emptylabel\.csv, line 3: column 'label' is empty",
    ),
    (
        "json.csv",
        json.dumps([{"sentence": "ok", "label": "pos"}]).encode(),
        r"json\.csv: this \.csv file looks like a JSON document: name it \.json",
    ),
    (
        "jsonl.csv",
        b'{"sentence": "ok", "label": "pos"}\n{"sentence": "no", "label": "neg"}\n',
        r"jsonl\.csv: this \.csv file looks like JSON Lines: name it \.jsonl",
    ),
    (
        "tabs.csv",
        b"sentence\tlabel\nok\tpos\nno\tneg\n",
        r"tabs\.csv: this \.csv file looks like tab-separated text.*name it \.tsv",
    ),
    ("gzip.csv", gzip.compress(GOOD), r"gzip\.csv: not a text file: it looks like a gzip archive"),
    ("zip.csv", b"PK\x03\x04" + bytes(40), r"zip\.csv: not a text file: it looks like a ZIP"),
    ("nul.csv", b"sentence,label\x00\x00\x01", r"nul\.csv: not a text file: .*NUL bytes"),
    ("utf16.csv", "sentence,label\nok,pos\n".encode("utf-16"), r"utf16\.csv: .*UTF-16 text"),
    (
        "huge.csv",
        b'sentence,label\nok,pos\n"' + b"x" * 200_000 + b'",neg\n',
        r"huge\.csv, line 3: not valid CSV \(field larger than field limit",
    ),
]


@pytest.mark.parametrize(
    "name, content, pattern", BAD_TRAIN_FILES, ids=[c[0] for c in BAD_TRAIN_FILES]
)
def test_bad_training_file_is_one_line_naming_it(tok, tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as error:
        load(tok, train_file=str(path))
    assert one_line(error).startswith(str(path))


def test_unseen_label_in_validation_and_test_files_names_label_and_file(tok, tmp_path):
    train = tmp_path / "train.csv"
    train.write_bytes(GOOD)
    val = tmp_path / "val.csv"
    val.write_bytes(b"sentence,label\nok,pos\nhmm,meh\n")
    unseen = r"val\.csv, line 3: label 'meh' in column 'label' is not one of the training labels"
    with pytest.raises(DataError, match=unseen + r" \['neg', 'pos'\]") as error:
        load(tok, train_file=str(train), validation_file=str(val))
    one_line(error)
    with pytest.raises(DataError, match=r"val\.csv, line 3: label 'meh'"):
        load(tok, train_file=str(train), test_file=str(val))


def test_unreadable_file_names_the_os_error(tok, tmp_path, monkeypatch):
    # A real I/O error: /proc/self/mem exists and is a file, but reading it from 0 gives EIO.
    path = tmp_path / "eio.csv"
    os.symlink("/proc/self/mem", path)
    with pytest.raises(DataError, match=r"eio\.csv: cannot read the file: Input/output error"):
        load(tok, train_file=str(path))
    # Permission denied (faked: tests run as root here, where chmod 000 does not stop a read).
    locked = tmp_path / "locked.csv"
    locked.write_bytes(GOOD)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match=r"locked\.csv: cannot read the file: Permission denied"):
        read_table(str(locked))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One. Two.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus\.txt: cannot read the file: Permission denied"):
        read_documents(PretrainDataConfig(train_files=[str(corpus)]))


def test_binary_corpus_file_is_named_not_decoded(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(gzip.compress(b"One sentence. Another one.\n"))
    with pytest.raises(DataError, match=r"corpus\.txt: not a text file: it looks like a gzip"):
        read_documents(PretrainDataConfig(train_files=[str(path)]))


def test_text_is_not_mistaken_for_binary(tmp_path):
    assert binary_kind("Ünïcödé, tabs\tand \u2581pieces\n".encode()) is None
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfsentence,label\n")  # a UTF-8 BOM is dropped, not an error
    assert read_text(path) == "sentence,label\n"
    # One column files and JSON-looking text in a real CSV are fine.
    (tmp_path / "one.csv").write_bytes(b"sentence\nok\n")
    assert read_table(str(tmp_path / "one.csv")).columns == {"sentence": ["ok"]}
    (tmp_path / "brackets.csv").write_bytes(b'[sentence],label\n"[1, 2]",x\n')
    assert read_table(str(tmp_path / "brackets.csv")).columns["[sentence]"] == ["[1, 2]"]
