"""Prepared pretraining data: the corpus tokenized once into sharded, memory-mapped token files,
and the NSP / SOP / packed instances built from them lazily, batch by batch.

    jaxtl prepare --config configs/pretrain_base_fsdp.yaml   # or: the first `jaxtl pretrain`
    train, validation = open_prepared(cfg.data, tokenizer, tokenizer_folder, tokenizer_name,
                                      model_vocab_size=V)
    batches = PretrainingBatcher(train, batch_size=256, seed=0)  # the same batcher as in memory

**The folder.** ``data.prepared_dir`` holds ``train/shard-00000.arrow ...``, ``validation/...``
(the held-out documents, or ``data.validation_files``), ``plan.json`` (what is being prepared,
written first) and ``metadata.json`` (written last: format version, tokenizer name and sha256 of
its files, every source with its size and mtime, token dtype, per-shard counts, the training
token counts). A shard is one Apache Arrow IPC stream (the format of HF ``datasets``' own cache
files) holding a single row of four list columns: ``tokens`` (uint16, or uint32 for a vocabulary
over 65,535), ``sentence_offsets`` int64 [S+1] (into ``tokens``), ``document_sentences`` int64
[D+1] and ``chunk_sentences`` int64 [C+1] (the NSP chunks: consecutive sentences of one document
up to ``max_seq_length - 3`` tokens, cut greedily as create_pretraining_data.py does with its full
target length). Sentences longer than that are cut into pieces, as in memory.

*Why Arrow IPC:* over ``pa.memory_map`` the flat columns are zero-copy numpy views
(``np.frombuffer`` of the mapped buffers), so opening a shard reads its headers, not its tokens,
and a batch touches only the pages of its rows; pyarrow is already installed (a dependency of
``datasets``, whose ``Dataset.from_file`` opens a shard as it is). Grain + ArrayRecord was the
alternative: a new dependency whose records are opaque blobs decoded per read, while NSP needs
random access to sentence ranges of flat arrays; and what Grain's checkpointable iterator gives,
the batcher already has: every batch is a pure function of ``(seed, step)``.

**Preparation** cuts each text file into ranges of about ``data.prepare_shard_mb`` at blank
lines (a document never spans two shards; an HF dataset, streamed or not, is cut into runs of
rows of that size), tokenizes the shards in ``data.prepare_workers`` processes, and writes each
shard to a temporary name renamed when complete: an interrupted preparation resumes, skipping the
finished shards, and the same inputs give the same bytes whatever the worker count. With
``data.validation_fraction``, each document is held out with that probability, drawn from
``default_rng([split_seed, shard])``. A source whose size or modification time changed, or
another tokenizer (by the sha256 of its files), makes :func:`open_prepared` refuse the folder
(rerun ``jaxtl prepare``, which rebuilds it, or delete it); it is never silently reused. Content
changed with size and mtime kept (``touch -r``) is not detected: hashing every source at every
start would read the whole corpus.

**Lazy instances.** Start-up reads ``metadata.json`` and nothing of the shards. With NSP, the
instances of epoch ``e`` are the corpus's chunks in the order of a pseudo-random permutation of
``[0, C)`` keyed by ``(seed, e)`` (a Feistel network with cycle walking: O(1) memory, any index
computed alone); instance ``i`` is made from chunk ``perm(i)`` with the generator
``default_rng([seed, e, chunk, 4])``: a shorter target with ``short_seq_prob`` (the chunk's
leading sentences up to it), A = its first sentences, B = the rest (label 0) or, with
probability 1/2, sentences from a random other document anywhere in the corpus (label 1), then the
original truncation. With ``data.sop`` (ALBERT), B is always the rest (a one-sentence chunk's
second half) and the pair is swapped with probability 1/2 (``sop_labels`` 1). Without pairs,
instance ``perm(i)`` is the ``i``-th block of ``max_seq_length - 2`` tokens of a shard's
documents joined by [SEP] (a shard's last block may be short). Masking is unchanged
(:mod:`jaxtl.data.masking`, stream ``[seed, step, 1]`` row by global row), so a batch is a pure
function of ``(seed, step)`` whatever the process count, and a process reads only what its own
rows need (their chunks, and the random-next documents they draw).

*How batches differ from the in-memory path* (:mod:`jaxtl.data.pretraining`): there an epoch
re-chunks every document with random target lengths and gives the unused sentences of a
random-next chunk back to its document; here chunks are fixed at preparation, a short target uses
a prefix of the chunk, and a random-next instance leaves the rest of its chunk unused that epoch
(roughly a quarter of the tokens; an epoch has fewer, fuller rows: 607 instead of 934 batches of
32 for bench/RESULTS.md section 8's corpus). Packed rows do not cross shards. Validation
instances are the validation store's chunks in order, made with ``default_rng([split_seed, 0,
chunk, 2])``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxtl.config import PretrainDataConfig
from jaxtl.data.masking import SpecialTokens, check_word_boundaries, num_predictions
from jaxtl.data.pretraining import EVAL_INSTANCE_STREAM, Instances, _truncation
from jaxtl.data.sources import binary_kind, corpus_files
from jaxtl.data.text import split_documents, split_sentences
from jaxtl.errors import DataError

log = logging.getLogger("jaxtl")

FORMAT_VERSION = 1
TRAIN_INSTANCE_STREAM = 4  # the fourth seed word of a training instance's generator
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
_SCAN_BYTES = 1 << 20  # window read while looking for a blank line to cut a file at
_TOKENIZE_CHUNK = 8192  # sentences per tokenizer call
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json")
COLUMNS = ("tokens", "sentence_offsets", "document_sentences", "chunk_sentences")


# ------------------------------------------------------------------------------ fingerprints


def tokenizer_sha256(folder: Path) -> str:
    """sha256 over the tokenizer's files in ``folder`` (name and bytes, in a fixed order)."""
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _file_source(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _sources(cfg: PretrainDataConfig, files: list, what: str) -> list[dict]:
    """What the store named ``what`` is made from: files with size and mtime, or a dataset."""
    if files:
        return [_file_source(p) for p in corpus_files(list(files), what)]
    source = {"dataset": cfg.dataset, "config": cfg.dataset_config, "split": cfg.train_split,
              "text_column": cfg.text_column}
    local = Path(str(cfg.dataset)).expanduser()
    if local.exists():  # a local dataset folder/file: its files' sizes and mtimes
        inside = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        source["files"] = [_file_source(p) for p in inside]
    return [source]


def _plan(cfg: PretrainDataConfig, tokenizer_name: str, tokenizer_folder: Path) -> dict:
    """Everything the prepared bytes depend on; a folder prepared from another plan is stale."""
    fraction = 0.0 if cfg.validation_files else cfg.validation_fraction
    plan = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer_name,
        "tokenizer_sha256": tokenizer_sha256(tokenizer_folder),
        "train_sources": _sources(cfg, cfg.train_files, "data.train_files"),
        "validation_sources": (_sources(cfg, cfg.validation_files, "data.validation_files")
                               if cfg.validation_files else []),
        "validation_fraction": fraction,
        "split_seed": cfg.split_seed,
        "max_seq_length": cfg.max_seq_length,  # sentence pieces and NSP chunks are cut by it
        "shard_bytes": _shard_bytes(cfg),
    }
    return plan


def _shard_bytes(cfg: PretrainDataConfig) -> int:
    return max(1, int(cfg.prepare_shard_mb * 1e6))


def _describe_change(old: dict, new: dict) -> str | None:
    """One line naming what differs between two plans (None: the same)."""
    if old.get("format_version") != new["format_version"]:
        return (f"it has format version {old.get('format_version')}, this jaxtl reads "
                f"{FORMAT_VERSION}")
    if old["tokenizer_sha256"] != new["tokenizer_sha256"]:
        return (f"it was tokenized with {old['tokenizer']!r} (sha256 {old['tokenizer_sha256'][:12]}"
                f"...), but the tokenizer now is {new['tokenizer']!r} (sha256 "
                f"{new['tokenizer_sha256'][:12]}...)")
    for key in ("train_sources", "validation_sources"):
        before = {json.dumps(s, sort_keys=True) for s in old[key]}
        for source in new[key]:
            if json.dumps(source, sort_keys=True) in before:
                continue
            name = source.get("path") or source.get("dataset")
            match = next((s for s in old[key] if (s.get("path") or s.get("dataset")) == name), None)
            if match is None:
                return f"source {name} was not among its sources"
            if "size" in source:
                return (f"source {name} changed since (size {match['size']} -> {source['size']} "
                        f"bytes, mtime {match['mtime_ns']} -> {source['mtime_ns']} ns)")
            return f"source {name} changed since"
        if len(old[key]) != len(new[key]):
            gone = [s.get("path") or s.get("dataset") for s in old[key]
                    if json.dumps(s, sort_keys=True) not in
                    {json.dumps(t, sort_keys=True) for t in new[key]}]
            return f"source {gone[0] if gone else '?'} is no longer among the sources"
    for key in ("validation_fraction", "split_seed", "max_seq_length", "shard_bytes"):
        if old[key] != new[key]:
            return f"it was prepared with {key}={old[key]}, the config now has {new[key]}"
    return None


# ------------------------------------------------------------------------------ shard tasks


@dataclasses.dataclass(frozen=True)
class _Task:
    """One shard to prepare: a byte range of a file, or the texts of a run of dataset rows."""

    store: str  # "train" or "validation"
    index: int
    path: str | None = None
    start: int = 0
    end: int = 0
    texts: tuple | None = None
    holdout: float = 0.0  # the held-out share (train shards of a validation_fraction split)


def _cut_points(path: Path, size: int, shard_bytes: int) -> list[int]:
    """Byte offsets [0, ..., size] cutting ``path`` after blank lines about every shard_bytes."""
    cuts = [0]
    with open(path, "rb") as f:
        target = shard_bytes
        while target < size:
            f.seek(max(target, cuts[-1]))
            position, carry = f.tell(), b""
            cut = None
            while cut is None:
                window = f.read(_SCAN_BYTES)
                if not window:
                    break
                found = _BLANK_LINE.search(carry + window)
                if found:
                    cut = position - len(carry) + found.end()
                else:
                    carry = window[-64:]  # a blank line may straddle two windows
                    position += len(window)
            if cut is None or cut >= size:
                break
            cuts.append(cut)
            target = cut + shard_bytes
    cuts.append(size)
    return cuts


def _file_tasks(files: list[Path], store: str, shard_bytes: int, holdout: float) -> list[_Task]:
    tasks = []
    for path in files:
        with open(path, "rb") as f:
            kind = binary_kind(f.read(8192))
        if kind is not None:
            raise DataError(f"{path}: not a text file: it looks like {kind}")
        cuts = _cut_points(path, path.stat().st_size, shard_bytes)
        for start, end in zip(cuts, cuts[1:]):
            tasks.append(_Task(store, len(tasks), path=str(path), start=start, end=end,
                               holdout=holdout))
    return tasks


def _dataset_rows(cfg: PretrainDataConfig) -> Iterator[str]:
    """The text column of the HF dataset, row by row (streamed with ``data.streaming``)."""
    import datasets

    name = f"{cfg.dataset}/{cfg.dataset_config}" if cfg.dataset_config else cfg.dataset
    try:
        splits = datasets.load_dataset(cfg.dataset, cfg.dataset_config, streaming=cfg.streaming)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, no such config: all one way
        raise DataError(
            f"could not load dataset {name!r} with HF datasets ({type(e).__name__}: {e}). "
            "Offline? Give local files instead: data.train_files (text files)."
        ) from None
    if cfg.train_split not in splits:
        raise DataError(f"dataset {name!r} has no split {cfg.train_split!r} (data.train_split); "
                        f"splits: {', '.join(splits)}")
    split = splits[cfg.train_split]
    columns = split.column_names
    if columns is not None and cfg.text_column not in columns:
        raise DataError(f"data.text_column={cfg.text_column!r} is not a column of {name!r}; "
                        f"columns: {', '.join(columns)}")
    for row in split:
        text = row.get(cfg.text_column)
        if isinstance(text, str):
            yield text


def _dataset_tasks(cfg: PretrainDataConfig, shard_bytes: int, holdout: float) -> Iterator[_Task]:
    """Runs of rows of about ``shard_bytes`` of text, one task each, as the rows arrive."""
    texts, size, index = [], 0, 0
    for text in _dataset_rows(cfg):
        texts.append(text)
        size += len(text.encode("utf-8"))
        if size >= shard_bytes:
            yield _Task("train", index, texts=tuple(texts), holdout=holdout)
            texts, size, index = [], 0, index + 1
    if texts:
        yield _Task("train", index, texts=tuple(texts), holdout=holdout)


# ------------------------------------------------------------------------------ one shard


_worker_state: dict = {}


def _init_worker(tokenizer_folder: str, max_seq_length: int, prepared_dir: str,
                 split_seed: int) -> None:
    """Per worker process: the tokenizer (loaded once) and what every shard needs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoTokenizer  # not jaxtl.hf: a worker need not import JAX

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    _worker_state.update(tokenizer=tokenizer, max_seq_length=max_seq_length,
                         prepared_dir=Path(prepared_dir), split_seed=split_seed,
                         dtype=np.uint16 if len(tokenizer) <= 65535 else np.uint32)


def _shard_name(store: str, index: int) -> str:
    return f"{store}/shard-{index:05d}.arrow"


def _task_documents(task: _Task) -> list[list[str]]:
    if task.texts is not None:
        documents = []
        for text in task.texts:
            sentences = [s for line in text.splitlines() for s in split_sentences(line)]
            if sentences:
                documents.append(sentences)
        return documents
    with open(task.path, "rb") as f:
        f.seek(task.start)
        raw = f.read(task.end - task.start)
    try:
        text = raw.decode("utf-8-sig" if task.start == 0 else "utf-8")
    except UnicodeDecodeError as e:
        offset = task.start + e.start
        raise DataError(
            f"{task.path}: not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {offset}; "
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    return split_documents(text)


def _tokenize_documents(documents: list[list[str]]) -> list[list[list[int]]]:
    tokenizer = _worker_state["tokenizer"]
    sentences = [s for doc in documents for s in doc]
    ids: list = []
    for start in range(0, len(sentences), _TOKENIZE_CHUNK):
        ids.extend(tokenizer(sentences[start : start + _TOKENIZE_CHUNK], add_special_tokens=False,
                             return_attention_mask=False, return_token_type_ids=False,
                             verbose=False)["input_ids"])
    pieces = iter(ids)
    return [[next(pieces) for _ in doc] for doc in documents]


def _shard_arrays(documents: list[list[list[int]]], max_seq_length: int,
                  dtype) -> dict[str, np.ndarray]:
    """The four columns of one shard (see the module docstring) from tokenized documents."""
    max_tokens = max_seq_length - 3
    tokens: list[int] = []
    sentence_offsets, document_sentences, chunk_sentences = [0], [0], [0]
    for doc in documents:
        lengths = []
        for ids in doc:
            # A sentence longer than a segment is cut into pieces rather than lost to truncation.
            for p in range(0, len(ids), max_tokens):
                piece = ids[p : p + max_tokens]
                tokens.extend(piece)
                lengths.append(len(piece))
                sentence_offsets.append(len(tokens))
        if not lengths:
            continue
        # NSP chunks: consecutive sentences until the full target length is reached.
        length, first = 0, document_sentences[-1]
        for k, n in enumerate(lengths):
            length += n
            if k == len(lengths) - 1 or length >= max_tokens:
                chunk_sentences.append(first + k + 1)
                length = 0
        document_sentences.append(document_sentences[-1] + len(lengths))
    return {
        "tokens": np.asarray(tokens, dtype=dtype),
        "sentence_offsets": np.asarray(sentence_offsets, dtype=np.int64),
        "document_sentences": np.asarray(document_sentences, dtype=np.int64),
        "chunk_sentences": np.asarray(chunk_sentences, dtype=np.int64),
    }


def _write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """One Arrow IPC stream of a single row, written under a temporary name and renamed."""
    import pyarrow as pa

    columns = [pa.LargeListArray.from_arrays(pa.array([0, len(a)], pa.int64()), pa.array(a))
               for a in (arrays[name] for name in COLUMNS)]
    table = pa.Table.from_arrays(columns, names=list(COLUMNS))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(temporary, path)


def _prepare_shard(task: _Task) -> None:
    state = _worker_state
    documents = _tokenize_documents(_task_documents(task))
    held_out = []
    if task.holdout > 0:
        rng = np.random.default_rng([state["split_seed"], task.index])
        chosen = rng.random(len(documents)) < task.holdout
        held_out = [d for d, c in zip(documents, chosen) if c]
        documents = [d for d, c in zip(documents, chosen) if not c]
        _write_shard(state["prepared_dir"] / _shard_name("validation", task.index),
                     _shard_arrays(held_out, state["max_seq_length"], state["dtype"]))
    # The train shard last: its presence marks the task done.
    _write_shard(state["prepared_dir"] / _shard_name(task.store, task.index),
                 _shard_arrays(documents, state["max_seq_length"], state["dtype"]))


# ------------------------------------------------------------------------------ preparing


def prepare(cfg: PretrainDataConfig, tokenizer_folder: Path, tokenizer_name: str) -> dict:
    """Prepares ``cfg.prepared_dir`` (resuming an interrupted preparation); returns its metadata.

    A folder prepared from another plan (sources, tokenizer, split, max_seq_length, shard size)
    is rebuilt: its shard files and metadata are deleted first.
    """
    if cfg.prepared_dir is None:
        raise DataError("data.prepared_dir is not set: name the folder to prepare the data in")
    folder = Path(cfg.prepared_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    plan = _plan(cfg, tokenizer_name, tokenizer_folder)
    plan_file, meta_file = folder / "plan.json", folder / "metadata.json"
    if plan_file.exists():
        old = json.loads(plan_file.read_text())
        change = _describe_change(old, plan)
        if change is not None:
            log.warning("%s: rebuilding the prepared data: %s", folder, change)
            for path in [meta_file, plan_file, *folder.glob("*/shard-*.arrow*")]:
                path.unlink()
        elif meta_file.exists():
            return json.loads(meta_file.read_text())
    meta_file.unlink(missing_ok=True)
    plan_file.write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")

    shard_bytes = plan["shard_bytes"]
    holdout = plan["validation_fraction"]
    if cfg.train_files:
        train_tasks = iter(_file_tasks(corpus_files(list(cfg.train_files)), "train",
                                       shard_bytes, holdout))
    else:
        train_tasks = _dataset_tasks(cfg, shard_bytes, holdout)
    validation_tasks = iter(())
    if cfg.validation_files:
        validation_tasks = iter(_file_tasks(corpus_files(list(cfg.validation_files),
                                                         "data.validation_files"),
                                            "validation", shard_bytes, 0.0))
    counts = {"train": 0, "validation": 0}

    def pending():
        for task in itertools.chain(train_tasks, validation_tasks):
            counts[task.store] = max(counts[task.store], task.index + 1)
            if not (folder / _shard_name(task.store, task.index)).exists():
                yield task

    workers = cfg.prepare_workers or os.cpu_count() or 1
    init_args = (str(tokenizer_folder), cfg.max_seq_length, str(folder), cfg.split_seed)
    done = 0
    if workers == 1:
        _init_worker(*init_args)
        for task in pending():
            _prepare_shard(task)
            done += 1
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold JAX
        with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
            for _ in pool.imap(_prepare_shard, pending()):
                done += 1
    if holdout > 0:
        counts["validation"] = counts["train"]
    log.info("%s: prepared %d shard(s), %d already done", folder,
             done, counts["train"] + counts["validation"] - done)
    return _finish(folder, plan, counts, cfg)


def _finish(folder: Path, plan: dict, counts: dict, cfg: PretrainDataConfig) -> dict:
    """Per-shard counts and the most frequent training token, then metadata.json (last)."""
    stores = {}
    token_counts, dtype = None, None
    for store, num_shards in counts.items():
        shards = []
        for index in range(num_shards):
            name = _shard_name(store, index)
            columns = _read_shard(folder / name)
            dtype = columns["tokens"].dtype
            shards.append({
                "file": name,
                "tokens": int(len(columns["tokens"])),
                "sentences": int(len(columns["sentence_offsets"]) - 1),
                "documents": int(len(columns["document_sentences"]) - 1),
                "chunks": int(len(columns["chunk_sentences"]) - 1),
            })
            if store == "train" and len(columns["tokens"]):
                found = np.bincount(columns["tokens"])
                if token_counts is None:
                    token_counts = found
                else:
                    size = max(len(found), len(token_counts))
                    token_counts = (np.pad(token_counts, (0, size - len(token_counts)))
                                    + np.pad(found, (0, size - len(found))))
        stores[store] = shards
    train_docs = sum(s["documents"] for s in stores["train"])
    if train_docs == 0:
        raise DataError(f"{_what_train(cfg)}: no text (the corpus is empty)")
    if plan["validation_fraction"] > 0 and not sum(s["documents"] for s in stores["validation"]):
        raise DataError(
            f"data.validation_fraction={plan['validation_fraction']} held out no document of "
            f"{train_docs}; raise it, separate documents with blank lines, or set it to 0"
        )
    meta = {
        **plan,
        "token_dtype": str(dtype),
        "token_counts": [int(c) for c in token_counts] if token_counts is not None else [],
        "stores": stores,
        "totals": {store: {key: sum(s[key] for s in shards)
                           for key in ("tokens", "sentences", "documents", "chunks")}
                   for store, shards in stores.items()},
    }
    temporary = folder / "metadata.json.tmp"
    temporary.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, folder / "metadata.json")
    return meta


def _what_train(cfg: PretrainDataConfig) -> str:
    if cfg.train_files:
        return "data.train_files " + ", ".join(str(f) for f in cfg.train_files)
    return f"data.dataset={cfg.dataset!r}"


def _read_shard(path: Path) -> dict[str, np.ndarray]:
    """Zero-copy numpy views of a shard's columns (memory-mapped: nothing is read yet)."""
    import pyarrow as pa

    try:
        batch = pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_next_batch()
        columns = {}
        for name in COLUMNS:
            # np.frombuffer, not Array.to_numpy (which imports pandas: +44 MB of RSS), over the
            # memory-mapped buffer: a read-only view, nothing is read until indexed.
            values = batch.column(name).values
            dtype = np.dtype(str(values.type))
            columns[name] = np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values),
                                          offset=values.offset * dtype.itemsize)
        return columns
    except (OSError, pa.ArrowException, KeyError) as e:
        raise DataError(f"{path}: not a readable prepared shard ({e}); rerun `jaxtl prepare` "
                        "or delete the folder") from None


# ------------------------------------------------------------------------------ training


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (a bijective scramble)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def permute(index: np.ndarray, n: int, key: list[int], rounds: int = 4) -> np.ndarray:
    """``perm(index)`` for a pseudo-random permutation of ``[0, n)`` keyed by ``key``.

    A balanced Feistel network on ``[0, 4**k)`` >= n, cycle-walked back into range: any index
    maps alone in O(1) memory, and the same key gives the same permutation everywhere.
    """
    index = np.asarray(index, dtype=np.uint64)
    if n <= 1:
        return np.zeros_like(index, dtype=np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = np.random.default_rng(key).integers(0, 2**63, size=rounds, dtype=np.uint64)

    def feistel(x):
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << np.uint64(half)) | right

    out = feistel(index)
    outside = out >= n
    while outside.any():
        out[outside] = feistel(out[outside])
        outside = out >= n
    return out.astype(np.int64)


class _Store:
    """The shards of one store (train or validation), opened lazily and memory-mapped."""

    def __init__(self, folder: Path, shards: list[dict]):
        self.folder = folder
        self.shards = shards
        def starts(key: str) -> np.ndarray:  # int64 [shards+1]: first global id per shard
            return np.concatenate([[0], np.cumsum([s[key] for s in shards])]).astype(np.int64)

        self.chunk_starts = starts("chunks")
        self.doc_starts = starts("documents")
        self.num_chunks = int(self.chunk_starts[-1])
        self.num_documents = int(self.doc_starts[-1])
        self.touched: set[int] = set()  # shards opened (the tests check what a process reads)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one store per run
    def shard(self, index: int) -> dict[str, np.ndarray]:
        self.touched.add(index)
        return _read_shard(self.folder / self.shards[index]["file"])

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def separators(self, index: int) -> np.ndarray:
        """int64 [D-1]: where a [SEP] goes between documents in shard ``index``'s packed stream
        (its documents joined by [SEP], as the in-memory path packs them)."""
        columns = self.shard(index)
        doc_starts = columns["sentence_offsets"][columns["document_sentences"][1:-1]]
        return doc_starts + np.arange(len(doc_starts))

    def blocks(self, width: int) -> np.ndarray:
        """int64 [shards+1]: global block ids per shard (blocks of ``width`` packed tokens)."""
        per_shard = [-(-(s["tokens"] + max(s["documents"] - 1, 0)) // width) for s in self.shards]
        return np.concatenate([[0], np.cumsum(per_shard)]).astype(np.int64)


@dataclasses.dataclass(eq=False)
class PreparedCorpus:
    """A prepared store behind the interface :class:`PretrainingBatcher` reads (like
    :class:`jaxtl.data.pretraining.PretrainingData`); instances are made lazily per batch."""

    store: _Store
    special: SpecialTokens
    cfg: PretrainDataConfig
    token_counts: np.ndarray | None = None  # int64 [vocab] over the training store

    def __post_init__(self):
        check_word_boundaries(self.special, self.cfg)
        self.max_predictions = num_predictions(self.cfg)
        self._block_starts = self.store.blocks(self.cfg.max_seq_length - 2)

    @property
    def num_units(self) -> int:
        """Instances per epoch: NSP chunks, or packed blocks."""
        return self.store.num_chunks if self.cfg.pairs else int(self._block_starts[-1])

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, self.num_units // batch_size)

    def train_rows(self, seed: int, epoch: int, rows: np.ndarray) -> tuple[Instances, np.ndarray]:
        """Instances (offsets into the returned token array) of rows ``rows`` of an epoch."""
        units = permute(np.asarray(rows) % self.num_units, self.num_units, [seed, epoch, 5])
        return self._rows(units, lambda unit: [seed, epoch, int(unit), TRAIN_INSTANCE_STREAM])

    def num_eval_instances(self) -> int:
        return self.num_units

    def eval_rows(self, index: np.ndarray) -> tuple[Instances, np.ndarray]:
        return self._rows(np.asarray(index),
                          lambda unit: [self.cfg.split_seed, 0, int(unit), EVAL_INSTANCE_STREAM])

    def eval_nsp_labels(self) -> np.ndarray:
        return self.eval_rows(np.arange(self.num_units))[0].is_random_next

    @property
    def most_frequent_token(self) -> int:
        counts = np.array(self.token_counts, dtype=np.int64)
        counts = np.pad(counts, (0, max(0, self.special.vocab_size - len(counts))))
        counts[list(self.special.never_mask)] = 0
        return int(np.argmax(counts))

    def _rows(self, units: np.ndarray, seed_of) -> tuple[Instances, np.ndarray]:
        pieces, fields = [], []
        offset = 0
        for unit in units.tolist():
            if self.cfg.pairs:
                a, b, random_next = self._nsp_instance(unit, np.random.default_rng(seed_of(unit)))
            else:
                a, b, random_next = self._block(unit), None, False
            pieces.append(a)
            a_start, offset = offset, offset + len(a)
            b_start, b_len = offset, 0
            if b is not None:
                pieces.append(b)
                b_len = len(b)
                offset += b_len
            fields.append((a_start, len(a), b_start, b_len, random_next))
        table = np.array(fields, dtype=np.int64).reshape(-1, 5)
        stream = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)
        return Instances(*table[:, :4].T, table[:, 4].astype(bool)), stream

    def _locate(self, starts: np.ndarray, unit: int) -> tuple[int, int]:
        shard = int(np.searchsorted(starts, unit, side="right") - 1)
        return shard, unit - int(starts[shard])

    def _block(self, unit: int) -> np.ndarray:
        """Block ``unit`` of the packed streams: up to L - 2 tokens of one shard's documents,
        joined by [SEP]."""
        shard, block = self._locate(self._block_starts, unit)
        width = self.cfg.max_seq_length - 2
        tokens, separators = self.store.shard(shard)["tokens"], self.store.separators(shard)
        stream_len = len(tokens) + len(separators)
        position = np.arange(block * width, min((block + 1) * width, stream_len))
        before = np.searchsorted(separators, position)  # separators before each position
        is_sep = np.zeros(len(position), dtype=bool)
        if len(separators):
            is_sep = separators[np.minimum(before, len(separators) - 1)] == position
        ids = tokens[np.where(is_sep, 0, position - before)].astype(np.int32)
        return np.where(is_sep, self.special.sep_id, ids)

    def _nsp_instance(self, unit: int, rng: np.random.Generator):
        """Segments A and B (token arrays) and the label of chunk ``unit`` (module docstring)."""
        cfg, store = self.cfg, self.store
        max_tokens = cfg.max_seq_length - 3
        shard, chunk = self._locate(store.chunk_starts, unit)
        columns = store.shard(shard)
        offsets, tokens = columns["sentence_offsets"], columns["tokens"]
        first, end = (int(x) for x in columns["chunk_sentences"][chunk : chunk + 2])
        target = max_tokens
        if rng.random() < cfg.short_seq_prob:
            target = 2 + int(rng.random() * (max_tokens - 1))
        lengths = np.cumsum(np.diff(offsets[first : end + 1]))
        end = first + min(int(np.searchsorted(lengths, target)) + 1, end - first)
        n = end - first
        a_end = first + 1 + (int(rng.random() * (n - 1)) if n >= 2 else 0)
        a = tokens[offsets[first] : offsets[a_end]]
        if cfg.sop:  # B is A's continuation (a one-sentence chunk: its second half)
            b = tokens[offsets[a_end] : offsets[end]]
            if n == 1:
                a, b = a[: (len(a) + 1) // 2], a[(len(a) + 1) // 2 :]
            random_next = rng.random() < 0.5  # here: the two are swapped
        elif n == 1 or rng.random() < 0.5:
            b = self._random_next(shard, first, target - len(a), rng)
            random_next = True
        else:
            b = tokens[offsets[a_end] : offsets[end]]
            random_next = False
        cut_a, cut_b = _truncation(len(a), len(b), max_tokens)
        if cut_a:
            front = int(rng.binomial(cut_a, 0.5))
            a = a[front : len(a) - (cut_a - front)]
        if cut_b:
            front = int(rng.binomial(cut_b, 0.5))
            b = b[front : len(b) - (cut_b - front)]
        if cfg.sop and random_next:
            a, b = b, a
        return a, b, random_next

    def _random_next(self, shard: int, sentence: int, target: int, rng) -> np.ndarray:
        """Sentences of a random other document (from any shard), up to ``target`` tokens."""
        store = self.store
        own_doc = int(store.doc_starts[shard]) + int(np.searchsorted(
            store.shard(shard)["document_sentences"], sentence, side="right") - 1)
        if store.num_documents > 1:
            other = int(rng.random() * (store.num_documents - 1))
            other += other >= own_doc
        else:
            other = own_doc
        other_shard, doc = self._locate(store.doc_starts, other)
        columns = store.shard(other_shard)
        offsets = columns["sentence_offsets"]
        first, end = (int(x) for x in columns["document_sentences"][doc : doc + 2])
        start = first + int(rng.random() * (end - first))
        lengths = offsets[start + 1 : end + 1] - offsets[start]
        last = start + min(int(np.searchsorted(lengths, target)), end - start - 1)
        return columns["tokens"][offsets[start] : offsets[last + 1]]


def open_prepared(
    cfg: PretrainDataConfig, tokenizer, tokenizer_folder: Path, tokenizer_name: str, *,
    model_vocab_size: int, may_prepare: bool = True,
) -> tuple[PreparedCorpus, PreparedCorpus | None]:
    """(train, validation or None) from ``cfg.prepared_dir``, preparing it first when it holds no
    finished preparation and ``may_prepare``. Raises DataError for a stale folder (naming what
    changed), a tokenizer that does not fit the model, or a corpus unfit for NSP."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    if special.vocab_size > model_vocab_size:
        raise DataError(
            f"the tokenizer has {special.vocab_size} tokens but the model's vocabulary has only "
            f"{model_vocab_size}: use the tokenizer the model was trained with (model.tokenizer) "
            "or a model with vocab_size >= the tokenizer's"
        )
    minimum = 5 if cfg.pairs else 3
    if cfg.max_seq_length < minimum:
        raise DataError(f"data.max_seq_length={cfg.max_seq_length} is too short: needs at least "
                        f"{minimum}")
    folder = Path(cfg.prepared_dir).expanduser()
    meta_file = folder / "metadata.json"
    if not meta_file.exists():
        if not may_prepare:
            raise DataError(
                f"data.prepared_dir={cfg.prepared_dir} holds no finished preparation; run "
                "`jaxtl prepare --config <this config>` once before a multi-process run"
            )
        log.info("preparing %s (once; `jaxtl prepare` does this ahead of time)", folder)
        prepare(cfg, tokenizer_folder, tokenizer_name)
    meta = json.loads(meta_file.read_text())
    change = _describe_change(meta, _plan(cfg, tokenizer_name, tokenizer_folder))
    if change is not None:
        raise DataError(
            f"data.prepared_dir={cfg.prepared_dir} is stale: {change}; rerun `jaxtl prepare` "
            "with this config (it rebuilds the folder) or delete the folder"
        )
    counts = np.asarray(meta["token_counts"], dtype=np.int64)
    train = PreparedCorpus(_Store(folder, meta["stores"]["train"]), special, cfg, counts)
    if cfg.pairs and meta["totals"]["train"]["sentences"] < 2:
        raise DataError(
            f"{_what_train(cfg)}: the whole corpus is one sentence, so next-sentence prediction "
            "is impossible; add text, or set data.nsp=false for masked-LM only"
        )
    validation = None
    if meta["stores"].get("validation") and meta["totals"]["validation"]["documents"]:
        validation = PreparedCorpus(_Store(folder, meta["stores"]["validation"]), special, cfg,
                                    counts)
    return train, validation
