"""jaxtl's dropout (``families.layers.Dropout`` / ``keep_mask``): four 16-bit lanes per threefry
hash instead of flax's one 32-bit word per element. The rate, the independence of lanes that
share a hash, the key's role and flax's semantics (scaling, deterministic) are checked here;
that a sharded mask equals the unsharded one is in test_sharding.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtl.families.layers import Dropout, keep_mask

SHAPE = (16, 4, 64, 64)  # 262,144 elements


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [SHAPE, (512, 511)])  # a last axis of 511: the bernoulli fallback
def test_drop_fraction_matches_the_rate(rate, shape):
    keep = np.asarray(keep_mask(jax.random.key(0), shape, rate))
    n = keep.size
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs((1 - keep.mean()) - rate) < 5 * sigma, (keep.mean(), rate)


def test_lanes_of_one_hash_are_independent():
    """The four lanes of a hash sit side by side on the last axis: neighbours, and elements four
    apart (different hashes), must both look independent (joint keep rate = p**2)."""
    p = 0.5
    keep = np.asarray(keep_mask(jax.random.key(1), SHAPE, 1 - p)).reshape(-1, 4).astype(np.float64)
    n = keep.shape[0]
    for i in range(4):
        for j in range(i + 1, 4):
            joint = (keep[:, i] * keep[:, j]).mean()
            assert abs(joint - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / n), (i, j, joint)
    # Across hashes: consecutive words.
    joint = (keep[:-1, 0] * keep[1:, 0]).mean()
    assert abs(joint - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / n)


def test_the_key_decides_the_mask():
    a = np.asarray(keep_mask(jax.random.key(0), SHAPE, 0.1))
    again = np.asarray(keep_mask(jax.random.key(0), SHAPE, 0.1))
    other = np.asarray(keep_mask(jax.random.key(1), SHAPE, 0.1))
    np.testing.assert_array_equal(a, again)
    assert (a != other).mean() > 0.1  # two independent masks at p=0.9 differ at 18 % of elements
    # A raw uint32[2] key draws the same mask as the typed key holding it.
    raw = np.asarray(keep_mask(jax.random.key_data(jax.random.key(0)), SHAPE, 0.1))
    np.testing.assert_array_equal(a, raw)


def test_dropout_scales_and_respects_deterministic():
    x = jnp.ones((64, 128))
    layer = Dropout(0.25)
    assert layer.apply({}, x, deterministic=True) is x
    y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
    assert np.all(np.isclose(y, 0.0) | np.isclose(y, 1 / 0.75))  # dropped, or scaled by 1/(1-rate)
    assert abs(y.mean() - 1.0) < 0.05  # the expectation is kept
    np.testing.assert_array_equal(
        Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}), 0.0)
    np.testing.assert_array_equal(
        Dropout(0.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}), x)
