"""Text corpora: files (paths, globs, folders) or an HF dataset's text column → sentences.

    documents = read_documents(cfg.data)  # list[list[str]]: documents, each a list of sentences

Text files hold documents separated by blank lines; every other line is split into sentences by
:func:`split_sentences` (a sentence never spans a line break, and a line holding several
sentences — a paragraph — is cut after ``.``/``!``/``?`` followed by a capitalised word or a
digit; common abbreviations and initials do not end a sentence). Files with one sentence per line
(BERT's own format) therefore keep their lines. An HF dataset gives one document per row of
``text_column``, split the same way. A document never spans two files.
"""

from __future__ import annotations

import re

from jaxtl.config import PretrainDataConfig
from jaxtl.data.sources import HubDataset, corpus_files, read_text
from jaxtl.errors import DataError

# A sentence ends at .!? (plus closing quotes/brackets) followed by whitespace and a capitalised
# word or a digit, unless the dot ends a common abbreviation or an initial ("J. Smith").
SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_NOT_AN_END = re.compile(r"(?:^|[\s(\"'])(?:Mr|Mrs|Ms|Dr|St|Prof|vs|No|e\.g|i\.e|[A-Z])\.$")


def split_sentences(line: str) -> list[str]:
    """Sentences of one line of text (the line itself when it holds only one)."""
    sentences, start = [], 0
    for match in SENTENCE_END.finditer(line):
        if _NOT_AN_END.search(line, max(0, match.start() - 6), match.start() + 1):
            continue
        sentence = line[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    rest = line[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def split_documents(text: str) -> list[list[str]]:
    """Documents (separated by blank lines) of sentences."""
    documents, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.extend(split_sentences(line))
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


def read_documents(cfg: PretrainDataConfig) -> list[list[str]]:
    """Documents, each a list of sentences, from ``cfg.train_files`` or the HF ``cfg.dataset``.

    Raises DataError for a missing or unreadable file, a glob matching nothing, non-UTF-8 or
    binary data, an empty corpus, or (with ``cfg.nsp``) a corpus of a single sentence.
    """
    if cfg.dataset is not None and cfg.train_files:
        raise DataError("set either data.train_files or data.dataset, not both")
    if cfg.dataset is not None:
        source = f"data.dataset={cfg.dataset!r}"
        documents = _dataset_documents(cfg)
    elif cfg.train_files:
        source, documents = file_documents(list(cfg.train_files), "data.train_files")
    else:
        raise DataError("set data.train_files (text files) or data.dataset")
    if not documents:
        raise DataError(f"{source}: no text (the corpus is empty)")
    if cfg.pairs and sum(len(d) for d in documents) < 2:
        raise DataError(
            f"{source}: the whole corpus is one sentence, so next-sentence prediction is "
            "impossible; add text, or set data.nsp=false for masked-LM only"
        )
    return documents


def file_documents(names: list, what: str) -> tuple[str, list[list[str]]]:
    """(a description naming the files, their documents) for the file names of key ``what``."""
    files = corpus_files(names, what)
    documents = []
    for path in files:  # a document never spans two files
        documents.extend(split_documents(read_text(path)))
    return f"{what} " + ", ".join(str(f) for f in files), documents


def _dataset_documents(cfg: PretrainDataConfig) -> list[list[str]]:
    hub = HubDataset(cfg.dataset, cfg.dataset_config, local_hint="data.train_files (text files)")
    ds = hub.split(cfg.train_split, "train_split")
    if cfg.text_column not in ds.column_names:
        raise DataError(
            f"data.text_column={cfg.text_column!r} is not a column of {hub.name!r}; "
            f"columns: {', '.join(ds.column_names)}"
        )
    documents = []
    for text in ds[cfg.text_column]:
        if not isinstance(text, str):
            continue
        sentences = [s for line in text.splitlines() for s in split_sentences(line)]
        if sentences:
            documents.append(sentences)
    return documents
