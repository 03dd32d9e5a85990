"""Prepared pretraining data (jaxtl.data.prepared): tokenized once into memory-mapped shards,
instances made lazily per batch. Determinism across preparations, resumes and process counts;
interrupted preparation; stale folders refused through the CLI; validation files; streaming;
an end-to-end `jaxtl pretrain` run on prepared data that resumes exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import (
    WORDS,
    assert_same_final_weights,
    assert_same_metrics,
    make_tokenizer,
    read_metrics,
    run_with_signal,
)

from jaxtl import cli, config as config_lib, train
from jaxtl.config import PretrainDataConfig
from jaxtl.data import prepared
from jaxtl.data import pretraining as pt
from jaxtl.data.batching import PretrainingBatcher
from jaxtl.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
L = 32


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for this module: the stopped run and its resumption compile
    the programs of the uninterrupted run again (as in test_pretrain_e2e.py)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.set_cache_dir(str(tmp_path_factory.mktemp("jax-cache")))
    cc.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cc.reset_cache()


def corpus_text(seed: int, num_docs: int = 30) -> str:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(num_docs):
        sentences = [" ".join(rng.choice(WORDS, rng.integers(4, 14))).capitalize() + "."
                     for _ in range(rng.integers(2, 9))]
        docs.append("\n".join(sentences))
    return "\n\n".join(docs) + "\n"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    tokenizer = make_tokenizer(root)
    for i in range(3):
        (root / f"c{i}.txt").write_text(corpus_text(i), encoding="utf-8")
    (root / "held_out.txt").write_text(corpus_text(7, num_docs=6), encoding="utf-8")
    return {"root": root, "tok": tokenizer, "tok_dir": root / "tokenizer"}


def data_config(assets, folder, **kw) -> PretrainDataConfig:
    kw.setdefault("train_files", [str(assets["root"] / "c*.txt")])
    kw.setdefault("max_seq_length", L)
    kw.setdefault("validation_fraction", 0.1)
    kw.setdefault("prepare_shard_mb", 0.002)  # ~2 kB shards: a dozen of them
    kw.setdefault("prepare_workers", 1)
    return PretrainDataConfig(prepared_dir=str(folder), **kw)


def open_data(assets, cfg):
    return prepared.open_prepared(cfg, assets["tok"], assets["tok_dir"], "tok",
                                  model_vocab_size=1000)


def folder_digest(folder: Path) -> str:
    """sha256 over every shard's bytes and the metadata (names included)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*/shard-*.arrow")) + [folder / "metadata.json"]:
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def prepared_folder(assets):
    folder = assets["root"] / "prep"
    cfg = data_config(assets, folder)
    prepared.prepare(cfg, assets["tok_dir"], "tok")
    return folder, cfg


# ------------------------------------------------------------------------------ preparing


def test_shards_hold_every_document_and_split_by_fraction(prepared_folder, assets):
    folder, cfg = prepared_folder
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["format_version"] == prepared.FORMAT_VERSION
    assert meta["token_dtype"] == "uint16" and len(meta["stores"]["train"]) > 5
    assert [Path(s["path"]).name for s in meta["train_sources"]] == ["c0.txt", "c1.txt", "c2.txt"]
    assert meta["tokenizer_sha256"] == prepared.tokenizer_sha256(assets["tok_dir"])
    # Every document is in exactly one store, with exactly the in-memory path's tokens.
    in_memory, _ = pt.load_pretraining_data(
        dataclasses.replace(cfg, prepared_dir=None, prepare_shard_mb=64.0, prepare_workers=None,
                            validation_fraction=0.0), assets["tok"], model_vocab_size=1000)
    expected = sorted(tuple(np.concatenate(d).tolist()) for d in in_memory.documents)
    found = []
    for path in sorted(folder.glob("*/shard-*.arrow")):
        columns = prepared._read_shard(path)
        offsets, docs = columns["sentence_offsets"], columns["document_sentences"]
        for d in range(len(docs) - 1):
            begin, end = offsets[docs[d]], offsets[docs[d + 1]]
            found.append(tuple(columns["tokens"][begin:end].tolist()))
    assert sorted(found) == expected
    totals = meta["totals"]
    assert 0 < totals["validation"]["documents"] < totals["train"]["documents"]
    # A shard is an Arrow IPC file that HF datasets opens as it is.
    import datasets

    shard = datasets.Dataset.from_file(str(folder / "train" / "shard-00000.arrow"))
    assert shard.column_names == list(prepared.COLUMNS) and len(shard) == 1


def test_interrupted_preparation_resumes_to_the_same_bytes(prepared_folder, assets, tmp_path):
    folder, cfg = prepared_folder
    digest = folder_digest(folder)
    # A copy interrupted mid-way: no metadata, two shards missing, one half-written temp file.
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(folder), str(copy)], check=True)
    (copy / "metadata.json").unlink()
    (copy / "train" / "shard-00002.arrow").unlink()
    (copy / "train" / "shard-00004.arrow").unlink()
    (copy / "train" / "shard-00004.arrow.tmp").write_bytes(b"ARROW1 half a shard")
    cfg_copy = dataclasses.replace(cfg, prepared_dir=str(copy))
    prepared.prepare(cfg_copy, assets["tok_dir"], "tok")
    assert folder_digest(copy) == digest
    assert not (copy / "train" / "shard-00004.arrow.tmp").exists()  # replaced, then renamed


def test_prepare_killed_mid_way_then_rerun_gives_the_same_bytes(assets, tmp_path):
    """A real SIGKILL of `jaxtl prepare` after its first shards, then a rerun: the same bytes as
    an uninterrupted preparation (finished shards kept, the rest written, metadata last)."""
    import signal
    import time

    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(corpus_text(s, num_docs=40) for s in range(40)), encoding="utf-8")
    config = write_config(tmp_path / "c.yaml", assets, tmp_path / "killed",
                          data={"train_files": [str(big)], "prepare_shard_mb": 0.02})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "jaxtl.cli", "prepare", "--config", config],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = tmp_path / "killed" / "train"
    deadline = time.monotonic() + 240
    while len(list(shards.glob("shard-*.arrow"))) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(shards.glob("shard-*.arrow")))
    assert not (tmp_path / "killed" / "metadata.json").exists()
    cfg = config_lib.load(config)
    meta = prepared.prepare(cfg.data, assets["tok_dir"], "tok")  # the rerun
    assert written < len(meta["stores"]["train"]), "the kill came too late to interrupt anything"
    straight = dataclasses.replace(cfg.data, prepared_dir=str(tmp_path / "straight"))
    prepared.prepare(straight, assets["tok_dir"], "tok")
    assert folder_digest(tmp_path / "killed") == folder_digest(tmp_path / "straight")


def test_two_workers_give_the_same_bytes(prepared_folder, assets, tmp_path):
    folder, cfg = prepared_folder
    other = tmp_path / "two"
    prepared.prepare(dataclasses.replace(cfg, prepared_dir=str(other), prepare_workers=2),
                     assets["tok_dir"], "tok")
    assert folder_digest(other) == folder_digest(folder)


def test_permutation_is_a_bijection_keyed_by_seed_and_epoch():
    for n in (1, 2, 3, 17, 1000, 4097):
        perm = prepared.permute(np.arange(n), n, [0, 0, 5])
        assert sorted(perm.tolist()) == list(range(n))
    a = prepared.permute(np.arange(1000), 1000, [0, 0, 5])
    b = prepared.permute(np.arange(1000), 1000, [0, 1, 5])
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(prepared.permute(np.arange(500, 510), 1000, [0, 0, 5]), a[500:510])


# ------------------------------------------------------------------------------ batches


def batch_of(data, step, **kw):
    return PretrainingBatcher(data, batch_size=8, seed=3, **kw).train_batch(step)


def assert_same_batch(x, y):
    assert x.keys() == y.keys()
    for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
        assert x[key].dtype == y[key].dtype


@pytest.mark.parametrize("nsp", [True, False])
def test_a_batch_is_a_pure_function_of_seed_and_step(prepared_folder, assets, tmp_path, nsp):
    folder, cfg = prepared_folder
    cfg = dataclasses.replace(cfg, nsp=nsp)
    train_a, _ = open_data(assets, cfg)
    fresh = tmp_path / "fresh"  # a fresh preparation of the same inputs
    train_b, _ = open_data(assets, dataclasses.replace(cfg, prepared_dir=str(fresh)))
    steps_per_epoch = PretrainingBatcher(train_a, batch_size=8).steps_per_epoch
    assert steps_per_epoch >= 4
    for step in (0, 3, steps_per_epoch + 1):
        reference = batch_of(train_a, step)
        assert_same_batch(reference, batch_of(train_b, step))
        resumed, _ = open_data(assets, cfg)  # a new process: nothing cached
        assert_same_batch(reference, batch_of(resumed, step))
        halves = [batch_of(open_data(assets, cfg)[0], step, process_index=p, process_count=2)
                  for p in range(2)]
        assert_same_batch(reference, {k: np.concatenate([h[k] for h in halves]) for k in reference})
    assert not np.array_equal(batch_of(train_a, 0)["input_ids"], batch_of(train_a, 1)["input_ids"])


def test_rows_are_real_pairs_and_epochs_reshuffle(prepared_folder, assets):
    folder, cfg = prepared_folder
    train_data, _ = open_data(assets, cfg)
    batcher = PretrainingBatcher(train_data, batch_size=8, seed=0)
    cls_id, sep_id = assets["tok"].cls_token_id, assets["tok"].sep_token_id
    labels = []
    for step in range(batcher.steps_per_epoch):
        batch = batcher.train_batch(step)
        ids = batch["input_ids"]
        assert (ids[:, 0] == cls_id).all()
        assert ((ids == sep_id) & (batch["attention_mask"] == 1)).sum(axis=1).tolist() == [2] * 8
        assert (batch["attention_mask"].sum(axis=1) <= L).all()
        labels.extend(batch["nsp_labels"].tolist())
    assert 0.3 < np.mean(labels) < 0.7  # random next half the time
    # An epoch visits every chunk once; the next epoch visits them in another order.
    n = train_data.num_units
    epoch0 = prepared.permute(np.arange(n), n, [0, 0, 5])
    epoch1 = prepared.permute(np.arange(n), n, [0, 1, 5])
    assert sorted(epoch0.tolist()) == list(range(n)) and not np.array_equal(epoch0, epoch1)


def test_each_process_builds_and_reads_only_its_rows(prepared_folder, assets, monkeypatch):
    folder, cfg = prepared_folder
    cfg = dataclasses.replace(cfg, nsp=False)  # packed rows: a row reads its own block only
    built = {}
    for p in range(2):
        data, _ = open_data(assets, cfg)
        units = []
        original = data._block
        monkeypatch.setattr(data, "_block", lambda unit, original=original, units=units:
                            (units.append(unit), original(unit))[1])
        batch_of(data, 2, process_index=p, process_count=2)
        built[p] = (units, set(data.store.touched))
    whole, _ = open_data(assets, cfg)
    n = whole.num_units
    expected = prepared.permute(np.arange(16, 24) % n, n, [3, 0, 5])
    assert built[0][0] == expected[:4].tolist() and built[1][0] == expected[4:].tolist()
    for p in range(2):
        shards = {whole._locate(whole._block_starts, u)[0] for u in built[p][0]}
        assert built[p][1] == shards  # no other shard was even opened


# ------------------------------------------------------------------------------ validation


def test_validation_files_in_memory_and_prepared(assets, tmp_path):
    held_out = str(assets["root"] / "held_out.txt")
    cfg = data_config(assets, tmp_path / "v", validation_files=[held_out],
                      validation_fraction=0.02)
    train_data, validation = open_data(assets, cfg)
    meta = json.loads((tmp_path / "v" / "metadata.json").read_text())
    assert meta["totals"]["validation"]["documents"] == 6
    assert meta["totals"]["train"]["documents"] == 90  # nothing held out of the training files
    batches = list(PretrainingBatcher(validation, batch_size=8).eval_batches())
    assert sum(int(b["example_weight"].sum()) for b in batches) == validation.num_units
    memory_train, memory_val = pt.load_pretraining_data(
        dataclasses.replace(cfg, prepared_dir=None, prepare_workers=None, prepare_shard_mb=64.0),
        assets["tok"], model_vocab_size=1000)
    assert len(memory_val.documents) == 6 and len(memory_train.documents) == 90
    both = ["task: pretrain", "model: {size: tiny, tokenizer: t}",
            f"data: {{train_files: [a.txt], validation_files: [{held_out}], "
            "validation_fraction: 0.1}"]
    (tmp_path / "both.yaml").write_text("\n".join(both) + "\n")
    with pytest.raises(ConfigError, match="validation_fraction=0.1 is not used when "
                                          "data.validation_files is set"):
        config_lib.load(tmp_path / "both.yaml")


def test_streaming_a_local_dataset_gives_the_same_shards(assets, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": corpus_text(i, num_docs=1)} for i in range(40)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = dict(train_files=[], dataset=str(folder), validation_fraction=0.0)
    streamed = data_config(assets, tmp_path / "s", streaming=True, **base)
    loaded = data_config(assets, tmp_path / "l", **base)
    prepared.prepare(streamed, assets["tok_dir"], "tok")
    prepared.prepare(loaded, assets["tok_dir"], "tok")
    shards = lambda f: [p.read_bytes() for p in sorted(f.glob("train/*.arrow"))]  # noqa: E731
    assert len(shards(tmp_path / "s")) > 1 and shards(tmp_path / "s") == shards(tmp_path / "l")
    train_data, _ = open_data(assets, streamed)
    assert train_data.store.num_documents == 40
    batch = PretrainingBatcher(train_data, batch_size=8).train_batch(0)
    assert batch["input_ids"].shape == (8, L)


# ------------------------------------------------------------------------------ the CLI


def write_config(path: Path, assets, folder, **sections) -> str:
    raw = {
        "task": "pretrain",
        "model": {"size": "tiny", "tokenizer": str(assets["tok_dir"]),
                  "overrides": {"hidden_size": 32, "num_attention_heads": 4,
                                "intermediate_size": 64, "max_position_embeddings": 64}},
        "data": {"train_files": [str(assets["root"] / "c*.txt")], "max_seq_length": L,
                 "validation_fraction": 0.0, "prepared_dir": str(folder),
                 "prepare_shard_mb": 0.002, "prepare_workers": 1},
        "optim": {"lr": 5e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "max_steps": 30, "log_every": 5, "seed": 0,
                  "progress": False, "tensorboard": False},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def run_cli(*argv):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "jaxtl.cli", *argv], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def test_stale_prepared_data_is_refused_naming_what_changed(assets, tmp_path, caplog):
    corpus = tmp_path / "one.txt"
    corpus.write_text(corpus_text(11), encoding="utf-8")
    folder = tmp_path / "prep"
    config = write_config(tmp_path / "c.yaml", assets, folder,
                          data={"train_files": [str(corpus)]})
    cfg = config_lib.load(config)
    assert prepared.prepare(cfg.data, assets["tok_dir"], "tok")["totals"]["train"]["documents"] == 30

    other_tok = tmp_path / "cased"
    make_tokenizer(other_tok, lowercase=False)
    result = run_cli("pretrain", "--config", config, "--workdir", str(tmp_path / "w"),
                     "--set", f"model.tokenizer={other_tok / 'tokenizer'}")
    assert result.returncode == 2, result.stderr
    assert "is stale" in result.stderr and "tokenized with" in result.stderr, result.stderr
    assert "jaxtl prepare" in result.stderr and "Traceback" not in result.stderr

    corpus.write_text(corpus_text(11) + "\nOne more line.\n", encoding="utf-8")
    result = run_cli("pretrain", "--config", config, "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2, result.stderr
    assert f"source {corpus.resolve()} changed" in result.stderr, result.stderr
    assert "jaxtl prepare" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("jaxtl: error:") == 1
    # `jaxtl prepare` (the same function) rebuilds the folder from the new text.
    meta = prepared.prepare(cfg.data, assets["tok_dir"], "tok")
    assert "rebuilding the prepared data: source" in caplog.text
    assert meta["train_sources"][0]["size"] == corpus.stat().st_size


def test_prepare_command_prints_the_totals(assets, tmp_path):
    config = write_config(tmp_path / "c.yaml", assets, tmp_path / "prep")
    assert cli.main(["prepare", "--config", config]) == 0
    assert cli.main(["prepare", "--config", config, "--set", "data.prepared_dir=null"]) == 2


def test_pretrain_on_prepared_data_lowers_the_loss_and_resumes_exactly(assets, tmp_path):
    folder = tmp_path / "prep"  # prepared on first use by the run itself
    config = write_config(tmp_path / "c.yaml", assets, folder,
                          train={"max_steps": 20, "save_every": 10})
    cfg = config_lib.load(config)
    straight = tmp_path / "straight"
    run_with_signal(cfg, straight, at_step=None)
    assert (folder / "metadata.json").exists()
    losses = [r["mlm_loss"] for r in read_metrics(straight) if r["split"] == "train"]
    assert losses[-1] < losses[0] - 0.3, losses

    resumed = tmp_path / "resumed"
    with pytest.raises(train.Stopped) as stopped:
        run_with_signal(cfg, resumed, at_step=7)
    assert stopped.value.step == 8
    run_with_signal(cfg, resumed, at_step=None)
    assert_same_final_weights(straight, resumed)  # the same batches, bit for bit, after the stop
    assert_same_metrics(straight, resumed)


# ------------------------------------------------------------------------------ sentence order


@pytest.mark.parametrize("path", ["in_memory", "prepared"])
def test_sentence_order_pairs_are_continuations_swapped_half_the_time(tmp_path, path):
    """ALBERT's SOP: B always follows A in one document; swapped (sop_labels 1) about half the
    time. Every word of the corpus is unique ("w17"), so a token id tells where it came from."""
    from test_data_pretraining import make_tokenizer as unique_tokenizer, unique_corpus

    tokenizer = unique_tokenizer()
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    text, docs = unique_corpus(num_docs=30)
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    cfg = PretrainDataConfig(train_files=[str(tmp_path / "corpus.txt")], nsp=False, sop=True,
                             max_seq_length=48, validation_fraction=0.0)
    if path == "prepared":
        cfg = dataclasses.replace(cfg, prepared_dir=str(tmp_path / "prep"), prepare_workers=1,
                                  prepare_shard_mb=0.002)
        data, _ = prepared.open_prepared(cfg, tokenizer, tmp_path / "tok", "tok",
                                         model_vocab_size=10000)
    else:
        data, _ = pt.load_pretraining_data(cfg, tokenizer, model_vocab_size=10000)
    doc_of = {f"w{w}": d for d, doc in enumerate(docs) for s in doc for w in
              (int(x[1:]) for x in s)}
    vocab = tokenizer.convert_ids_to_tokens
    batcher = PretrainingBatcher(data, batch_size=8, seed=0)
    labels = []
    for step in range(batcher.steps_per_epoch):
        batch = batcher.train_batch(step)
        assert "sop_labels" in batch and "nsp_labels" not in batch
        ids = batch["input_ids"].copy()
        for row in range(len(ids)):  # the masked positions' words put back
            valid = batch["masked_weights"][row] > 0
            ids[row, batch["masked_positions"][row][valid]] = batch["masked_labels"][row][valid]
        for row, label in enumerate(batch["sop_labels"].tolist()):
            used = batch["attention_mask"][row] == 1
            words = np.array(vocab(ids[row].tolist()))
            a = words[used & (batch["token_type_ids"][row] == 0)][1:-1]
            b = words[used & (batch["token_type_ids"][row] == 1)][:-1]
            assert len(a) and len(b)
            a_num, b_num = [int(w[1:]) for w in a], [int(w[1:]) for w in b]
            assert {doc_of[w] for w in [*a, *b]} == {doc_of[a[0]]}  # one document
            assert (max(a_num) < min(b_num)) if label == 0 else (min(a_num) > max(b_num))
            labels.append(label)
    assert 0.3 < np.mean(labels) < 0.7


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_clear_data_error(assets, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"Good words here.\n\ncaf\xe9 au lait.\n")
    with pytest.raises(DataError, match=r"latin\.txt: not valid UTF-8: byte 0xe9 at offset 21"):
        prepared.prepare(data_config(assets, tmp_path / "a", train_files=[str(latin)]),
                         assets["tok_dir"], "tok")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt: no text"):
        prepared.prepare(data_config(assets, tmp_path / "b", train_files=[str(empty)]),
                         assets["tok_dir"], "tok")
    # Another process of a multi-process run never prepares: the folder must be ready.
    with pytest.raises(DataError, match="holds no finished preparation; run `jaxtl prepare"):
        prepared.open_prepared(data_config(assets, tmp_path / "c"), assets["tok"],
                               assets["tok_dir"], "tok", model_vocab_size=1000,
                               may_prepare=False)
