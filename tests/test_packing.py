"""Packing several short examples into one row (``data.packing``) for sequence classification.

The reference is the unpacked batch through the same jaxtl model, whose logits every family's
parity test already holds to Hugging Face PyTorch: packed logits (block-diagonal mask, positions
restarting at the family's first position, per-example token types, each example's [CLS] read
at ``cls_positions``) must equal them within 1e-5, and the loss and gradients within 1e-5 / 1e-4
relative, for every family. The tiny random models get large weights (initializer_range 0.5) so
that a position, token type or mask mistake moves the logits well beyond the tolerance.

Also: the first-fit-decreasing packer on hand cases; the batcher keeps the unpacked plan's
examples per step, each exactly once, with row counts on a few bucketed sizes and split between
processes; a CLI-path fine-tune with packing lowers the loss and resumes bitwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
import yaml
from helpers import (
    assert_same_final_weights, assert_same_metrics, make_tiny_checkpoint, make_tokenizer,
    read_metrics, run_with_signal, sentiment_rows, write_csv,
)

from jaxtl import families, steps
from jaxtl.data.batching import ClassificationBatcher, pack_first_fit_decreasing
from jaxtl.data.classification import Split
from jaxtl.errors import DataError

ROW = 32  # max_seq_length of the test splits: the packed row length
TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=40, initializer_range=0.5,
            labels=("a", "b", "c"))
EXTRA = {"albert": dict(embedding_size=16), "electra": dict(embedding_size=16)}
PAIRS = {"bert": True, "albert": True, "electra": True, "roberta": False, "distilbert": False}


def make_split(n: int, seed: int, *, pairs: bool, pad_id: int, regression: bool = False) -> Split:
    """``n`` examples of 3..20 tokens (``[CLS] a [SEP] (b [SEP])``; ids 4.. avoid every pad id)."""
    rng = np.random.default_rng(seed)
    input_ids, token_type_ids = [], []
    for _ in range(n):
        a = rng.integers(4, 50, rng.integers(1, 10))
        b = rng.integers(4, 50, rng.integers(1, 9)) if pairs else np.zeros(0, np.int64)
        ids = np.concatenate([[2], a, [3]] + ([b, [3]] if pairs else []))
        types = np.concatenate([np.zeros(len(a) + 2), np.ones(len(b) + (1 if pairs else 0))])
        input_ids.append(ids.astype(np.int32))
        token_type_ids.append(types.astype(np.int32))
    labels = (rng.normal(size=n).astype(np.float32) if regression
              else rng.integers(0, 3, n).astype(np.int32))
    return Split("train", "test", input_ids, token_type_ids, labels, [("x", None)] * n,
                 max_seq_length=ROW, pad_id=pad_id)


def family_model(name: str, **overrides):
    spec = families.get(name)
    config = spec.config_cls(**{**TINY, **EXTRA.get(name, {}), **overrides})
    model = spec.build(config, "classification")
    params = model.init(jax.random.key(0), jnp.full((1, ROW), 5, jnp.int32))["params"]
    return spec, config, model, params


def packed_and_plain(split: Split, first_position: int, rows_B: np.ndarray):
    """(plain batch of the examples ``rows_B``, their packed batch, example of each packed slot)."""
    plain = ClassificationBatcher(split, batch_size=len(rows_B), bucket_sizes=[16, ROW])
    packer = ClassificationBatcher(split, batch_size=len(rows_B), packing=True,
                                   first_position=first_position)
    packed = packer._pack(rows_B)
    slot_example = np.full(packed["labels"].shape, -1)
    for r, members in enumerate(pack_first_fit_decreasing(packer.lengths[rows_B], ROW, packer.slots)):
        slot_example[r, : len(members)] = np.asarray(members)
    return plain._assemble(rows_B), packed, slot_example


def forward(model, params, batch):
    return steps.CLASSIFICATION.forward(model.apply, params, batch, deterministic=True)


def loss_and_grads(model, params, batch):
    """(logits, loss, metric sums, gradients) of the classification loss, deterministic."""
    def loss(p, batch):
        outputs = forward(model, p, batch)
        value, metrics = steps.CLASSIFICATION.loss(outputs, batch)
        return value, (outputs["logits"], metrics)

    (value, (logits, metrics)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, batch)
    return np.asarray(logits), value, metrics, grads


@pytest.mark.parametrize("name", ["bert", "roberta", "albert", "electra", "distilbert"])
def test_packed_logits_loss_and_grads_equal_unpacked(name):
    spec, config, model, params = family_model(name)
    pad_id = config.pad_token_id
    split = make_split(24, seed=1, pairs=PAIRS[name], pad_id=pad_id)
    rows_B = np.random.default_rng(2).permutation(24)
    plain, packed, slot_example = packed_and_plain(split, spec.first_position(config), rows_B)
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # it did pack
    if PAIRS[name]:
        assert packed["token_type_ids"].max() == 1

    logits_B, loss_plain, _, grads_plain = loss_and_grads(model, params, plain)
    logits_RxP, loss_packed, _, grads_packed = loss_and_grads(model, params, packed)
    real = packed["example_weight"] > 0
    assert real.sum() == 24
    scale = max(1.0, np.abs(logits_B).max())
    np.testing.assert_allclose(logits_RxP[real], logits_B[slot_example[real]], atol=1e-5 * scale, rtol=0)
    assert np.abs(logits_B).max() > 0.1  # logits that could show a mistake
    np.testing.assert_allclose(float(loss_packed), float(loss_plain), rtol=1e-5)
    floor = 1e-2 * max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_plain))
    for (path, g_plain), g_packed in zip(jax.tree_util.tree_leaves_with_path(grads_plain),
                                         jax.tree.leaves(grads_packed)):
        bound = 1e-4 * max(float(jnp.abs(g_plain).max()), floor)
        assert float(jnp.abs(g_packed - g_plain).max()) <= bound, jax.tree_util.keystr(path)


def test_packed_regression_loss_equals_unpacked():
    spec, config, model, params = family_model("bert", labels=("score",))
    split = make_split(16, seed=3, pairs=True, pad_id=0, regression=True)
    plain, packed, _ = packed_and_plain(split, 0, np.arange(16))
    _, loss_plain, m_plain, _ = loss_and_grads(model, params, plain)
    _, loss_packed, m_packed, _ = loss_and_grads(model, params, packed)
    np.testing.assert_allclose(float(loss_packed), float(loss_plain), rtol=1e-5)
    assert float(m_packed["count"]) == float(m_plain["count"]) == 16


def test_roberta_packed_positions_restart_after_the_padding_index():
    spec, config, _, _ = family_model("roberta")
    split = make_split(8, seed=4, pairs=False, pad_id=config.pad_token_id)
    _, packed, _ = packed_and_plain(split, spec.first_position(config), np.arange(8))
    starts = packed["cls_positions"][packed["example_weight"] > 0]
    rows = np.nonzero(packed["example_weight"] > 0)[0]
    assert (packed["position_ids"][rows, starts] == config.pad_token_id + 1).all()
    assert families.get("bert").first_position(config) == 0


# ---------------------------------------------------------------------------- the packer


def test_first_fit_decreasing_hand_cases():
    # 8 -> row 0, 6 -> row 1, 5 -> row 2 (no room left in 0 or 1), 3 -> row 1, 2 -> row 0.
    assert pack_first_fit_decreasing([5, 3, 8, 2, 6], 10, 10) == [[2, 3], [4, 1], [0]]
    # Ties keep index order; a full row (by tokens) is skipped.
    assert pack_first_fit_decreasing([4, 4, 4, 4], 8, 10) == [[0, 1], [2, 3]]
    # The slot bound: 2 examples per row whatever the room.
    assert pack_first_fit_decreasing([1] * 5, 100, 2) == [[0, 1], [2, 3], [4]]
    assert pack_first_fit_decreasing([10, 10], 10, 4) == [[0], [1]]  # exact fits
    assert pack_first_fit_decreasing([], 10, 4) == []
    with pytest.raises(DataError, match="11 tokens"):
        pack_first_fit_decreasing([3, 11], 10, 4)


@pytest.mark.parametrize("seed", range(5))
def test_packer_places_every_example_once_within_bounds(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 33, rng.integers(1, 200))
    rows = pack_first_fit_decreasing(lengths, 32, 6)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 32 and 1 <= len(row) <= 6 for row in rows)
    # First fit decreasing opens a row only for an example no earlier row had room for: the
    # examples that open rows 1, 2, ... are each longer than the room the rows before them
    # had left at that moment, which is at least their final room.
    for r in range(1, len(rows)):
        opener = rows[r][0]
        for earlier in rows[:r]:
            room_now = 32 - sum(lengths[i] for i in earlier)
            assert lengths[opener] > room_now or len(earlier) == 6


def test_batcher_keeps_each_steps_examples_and_buckets_rows():
    split = make_split(200, seed=5, pairs=True, pad_id=0)
    plain = ClassificationBatcher(split, batch_size=32, seed=7, bucket_sizes=[16, 32])
    packer = ClassificationBatcher(split, batch_size=32, seed=7, packing=True, row_multiple=4)
    bucketed = ClassificationBatcher(split, batch_size=32, seed=7, packing=True, row_multiple=4,
                                     bucket_sizes=[16])
    assert packer.row_quantum == 4 and packer.slots == ROW // packer.lengths.min()
    row_counts = set()
    for step in range(2 * plain.steps_per_epoch):  # two epochs: the order is the plan's
        a, b = plain.train_batch(step), packer.train_batch(step)
        assert b["input_ids"].shape[1] == ROW and b["input_ids"].shape[0] % 4 == 0
        row_counts.add(b["input_ids"].shape[0])
        # The same examples (as multisets of token sequences with their labels) in both.
        def examples(batch, packed):
            out = []
            for r in range(batch["input_ids"].shape[0]):
                if packed:
                    for k in range(batch["labels"].shape[1]):
                        if batch["example_weight"][r, k]:
                            tokens = batch["input_ids"][r][batch["segment_ids"][r] == k + 1]
                            out.append((tuple(tokens), int(batch["labels"][r, k])))
                else:
                    n = batch["attention_mask"][r].sum()
                    out.append((tuple(batch["input_ids"][r, :n]), int(batch["labels"][r])))
            return sorted(out)

        assert examples(a, False) == examples(b, True)
        c = bucketed.train_batch(step)  # rows of 16 where that takes fewer tokens
        assert examples(c, True) == examples(a, False)
        assert c["input_ids"].size <= b["input_ids"].size
        # Rows past the packed ones are all padding; real tokens never exceed the row.
        used = (b["segment_ids"] > 0).any(1)
        assert used[: used.sum()].all()
    # Few shapes: multiples of 4 up to 32 (a batch of 32 examples over half a row each needs 32).
    assert len(row_counts) <= 32 // 4 and max(row_counts) <= 32 and min(row_counts) < 32
    assert packer.train_batch(3)["input_ids"].tolist() == packer.train_batch(3)["input_ids"].tolist()


def test_row_length_is_the_bucket_with_fewest_tokens():
    def split_of(lengths):
        ids = [np.full(n, 7, np.int32) for n in lengths]
        return Split("train", "t", ids, [np.zeros(n, np.int32) for n in lengths],
                     np.zeros(len(lengths), np.int32), [("x", None)] * len(lengths), ROW, 0)

    def shape(lengths):
        packer = ClassificationBatcher(split_of(lengths), batch_size=len(lengths), packing=True,
                                       bucket_sizes=[16, 32])
        return packer._pack(np.arange(len(lengths)))["input_ids"].shape

    assert shape([5] * 8) == (3, 16)  # 3 rows of 16 (48 tokens) beat 2 rows of 32 (64)
    assert shape([8] * 8) == (4, 16)  # 4 x 16 = 2 x 32: the shorter rows (less attention work)
    # 20 tokens fit no row of 16; rows of 32: [20, 10], [10, 10, 10], [10, 10].
    assert shape([10] * 7 + [20]) == (3, 32)


def test_packed_rows_split_between_processes():
    split = make_split(64, seed=6, pairs=False, pad_id=0)
    whole = ClassificationBatcher(split, batch_size=32, packing=True).train_batch(1)
    parts = [ClassificationBatcher(split, batch_size=32, packing=True, process_index=i,
                                   process_count=2).train_batch(1) for i in range(2)]
    for key, value in whole.items():
        if value.shape[0] % 2 == 0:  # quantum 4 (32 // 8) divides; the 2-process one too
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, key)
    assert sum(float(p["example_weight"].sum()) for p in parts) == 32


# ---------------------------------------------------------------------------- end to end


def test_packed_finetune_learns_and_resumes_bitwise(tmp_path):
    from jaxtl import config as config_lib, train

    tok = make_tokenizer(tmp_path)
    ckpt = make_tiny_checkpoint(tmp_path, tok, cls=transformers.BertModel)
    rows = sentiment_rows(240, seed=1)
    train_csv = write_csv(tmp_path / "train.csv", ["sentence", "label"], rows[:192])
    valid_csv = write_csv(tmp_path / "valid.csv", ["sentence", "label"], rows[192:])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "task": "finetune",
        "model": {"pretrained": str(ckpt)},
        "data": {"train_file": train_csv, "validation_file": valid_csv, "max_seq_length": 32,
                 "bucket_sizes": [32], "packing": True},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "epochs": 4, "log_every": 8, "eval_every": 24,
                  "save_every": 8, "seed": 0, "progress": False, "tensorboard": False},
    }))
    cfg = config_lib.load(str(path))
    straight = tmp_path / "straight"
    results = run_with_signal(cfg, straight, at_step=None)
    losses = [r["loss"] for r in read_metrics(straight) if r["split"] == "train"]
    # It learns (the loss at step 48 depends on the dropout stream: 0.69 -> 0.37 here).
    assert losses[-1] < 0.6 * losses[0], losses
    assert results["validation"]["examples"] == 48  # evaluation stays unpacked: every example
    assert results["validation"]["accuracy"] >= 0.9, results

    resumed = tmp_path / "resumed"
    with pytest.raises(train.Stopped) as stopped:
        run_with_signal(cfg, resumed, at_step=20)
    assert stopped.value.step == 21
    run_with_signal(cfg, resumed, at_step=None)
    assert_same_final_weights(straight, resumed)
    assert_same_metrics(straight, resumed)
