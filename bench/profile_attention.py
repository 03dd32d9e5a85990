"""Where a pad-512 MiniLM step's attention time goes on CPU: the pieces timed one by one.

For one layer's attention tensors of a [B, L] batch (B x H x L x L = 32 x 12 x 512 x 512 for
MiniLM-L6 at pad-512), times, each jitted and alternated (median of ``--repeats``):

* the dropout keep-mask (``jax.random.bernoulli``, as flax's Dropout draws it) under each PRNG
  implementation: threefry2x32 (jax's default), rbg and unsafe_rbg (XLA's RngBitGenerator); and
  as an integer threshold on 16 or 8 random bits;
* mask + scale + softmax as the model writes it (``where`` with a boolean mask) and with an
  additive bias;
* the two attention einsums (Q K^T and P V), for scale.

    python bench/profile_attention.py                    # MiniLM shapes, L=512
    python bench/profile_attention.py --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp


def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def packed_keep_mask(key, shape, rate):
    """Dropout keep-mask from uint32 random words split into four uint8 lanes (rate resolution
    1/256: 0.1 becomes 26/256 = 0.1016 unless rounded on a finer grid)."""
    words = jax.random.bits(key, (*shape[:-1], shape[-1] // 4), jnp.uint32)
    lanes = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(shape)
    return lanes >= round(rate * 256)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--layers", type=int, default=6, help="to scale one layer's cost to a step")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    B, H, L, K = args.batch_size, args.heads, args.seq_len, args.head_dim
    shape = (B, H, L, L)
    q = jax.random.normal(jax.random.key(1), (B, L, H, K))
    k = jax.random.normal(jax.random.key(2), (B, L, H, K))
    mask = (jnp.arange(L)[None, :] < jnp.linspace(L // 4, L, B)[:, None])[:, None, None, :]
    logits = jax.random.normal(jax.random.key(3), shape)

    def keep_mask(impl):
        key = jax.random.key(0, impl=impl)
        return jax.jit(lambda key: jax.random.bernoulli(key, 0.9, shape)), key

    candidates = {}
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        fn, key = keep_mask(impl)
        candidates[f"dropout mask bernoulli [{impl}]"] = (fn, key)
    for bits in (8, 16):
        # Integer threshold on fewer random bits: threefry makes 32-bit words, so uint16 needs half
        # the hashing of a float uniform (and no int->float conversion), uint8 a quarter.
        threshold = round(0.1 * 2**bits)
        fn = jax.jit(lambda key, b=bits, t=threshold: jax.random.bits(key, shape, f"uint{b}") >= t)
        candidates[f"dropout mask bits uint{bits} >= t [threefry2x32]"] = (fn, jax.random.key(0))
    # jax.random.bits(..., uint8) still hashes one 32-bit word per element; drawing uint32 words
    # for a quarter of the elements and bitcasting each into four uint8 does a quarter of the work.
    candidates["dropout mask packed uint8 >= t [threefry2x32]"] = (
        jax.jit(lambda key: packed_keep_mask(key, shape, 0.1)), jax.random.key(0))
    candidates["softmax with where(bool mask)"] = (jax.jit(lambda x, m: jax.nn.softmax(
        jnp.where(m, x / jnp.sqrt(K), jnp.finfo(x.dtype).min), axis=-1)), logits, mask)
    candidates["softmax with additive bias"] = (jax.jit(lambda x, m: jax.nn.softmax(
        x / jnp.sqrt(K) + jnp.where(m, 0.0, jnp.finfo(x.dtype).min), axis=-1)), logits, mask)
    candidates["einsum Q K^T"] = (jax.jit(lambda a, b: jnp.einsum("bqhk,bshk->bhqs", a, b)), q, k)
    candidates["einsum P V"] = (jax.jit(lambda p_, v: jnp.einsum("bhqs,bshk->bqhk", p_, v)), logits, k)
    times = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for name, (fn, *fn_args) in candidates.items():
            times[name].append(timed(fn, *fn_args))
    print(f"one layer, {B}x{H}x{L}x{L} attention tensors (load {os.getloadavg()[0]:.1f}):")
    report = {}
    for name, ts in times.items():
        report[name] = statistics.median(ts)
        print(f"  {name:<40}{report[name] * 1e3:>9.0f} ms   x{args.layers} layers = "
              f"{report[name] * args.layers:.1f} s")
    print(json.dumps({"args": vars(args), "median_s": report, "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
