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
