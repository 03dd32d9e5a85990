"""Building blocks every encoder family shares: dense/LayerNorm with logical axes, activations,
attention, and the HF-config handling common to all family configs.

Every parameter carries logical axis names (``vocab``, ``embed``, ``heads``, ``mlp``, ...) and
the main activations carry logical constraints (``batch``, ``length``, ``embed``, ``heads``); the
rules in :mod:`jaxtl.sharding` map them onto a device mesh. Outside a mesh they are no-ops.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import math

import jax
import jax.numpy as jnp
import flax.linen as nn
from jax.extend.random import threefry2x32_p

from jaxtl.errors import ConfigError

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU, as torch's nn.GELU()
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # the tanh approximation
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
DTYPES = ("float32", "bfloat16", "float16")
# jaxtl-only config fields: how the model computes, not what it is; never written to config.json.
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat")


def check_common(config) -> None:
    """Checks every family config runs in ``__post_init__``."""
    if config.hidden_act not in ACTIVATIONS:
        raise ConfigError(
            f"hidden_act={config.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}"
        )
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"hidden_size={config.hidden_size} is not divisible by "
            f"num_attention_heads={config.num_attention_heads}"
        )
    for name in ("dtype", "param_dtype"):
        if getattr(config, name) not in DTYPES:
            raise ConfigError(f"{name}={getattr(config, name)!r}: use float32, bfloat16 or float16")


def labels_from_hf(hf: dict[str, Any]) -> tuple[str, ...] | None:
    """Label names in id order from ``id2label`` (or ``LABEL_i`` from ``num_labels``)."""
    id2label = hf.get("id2label")
    if id2label:
        return tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    if "num_labels" in hf:
        return tuple(f"LABEL_{i}" for i in range(int(hf["num_labels"])))
    return None


def config_from_hf(cls, hf: dict[str, Any], source: str, unsupported: dict, renames: dict | None = None,
                   **overrides):
    """A family config dataclass from an HF ``config.json`` dict; refuses what jaxtl cannot compute.

    ``unsupported``: HF field -> the values jaxtl implements (anything else is refused, naming the
    file); ``renames``: HF field name -> jaxtl field name (e.g. DistilBERT's ``dim``).
    """
    for key, allowed in unsupported.items():
        if key in hf and hf[key] not in allowed:
            raise ConfigError(
                f"{source}: {key}={hf[key]!r} is not supported by jaxtl "
                f"(only {allowed[0]!r}); refusing rather than computing something else"
            )
    fields = {f.name for f in dataclasses.fields(cls)}
    renamed = {(renames or {}).get(k, k): v for k, v in hf.items()}
    kwargs = {k: v for k, v in renamed.items()
              if k in fields and k not in RUNTIME_FIELDS + ("labels",)}
    labels = labels_from_hf(hf)
    if labels is not None:
        kwargs["labels"] = labels
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(
            f"{source}: {unknown[0]!r} is not an architecture field of {cls.__name__}; "
            f"known: {', '.join(sorted(fields))}"
        )
    kwargs.update(overrides)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # e.g. an unsupported hidden_act: say which file holds it
        raise ConfigError(f"{source}: {e}") from None


def config_to_hf(config, model_type: str, renames: dict | None = None, **extra) -> dict[str, Any]:
    """The HF ``config.json`` fields of a family config (labels as ``id2label``/``label2id``)."""
    back = {v: k for k, v in (renames or {}).items()}
    hf = {
        back.get(f.name, f.name): getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in RUNTIME_FIELDS + ("labels",)
    }
    if hf.get("problem_type") is None:
        hf.pop("problem_type", None)
    hf.update(
        model_type=model_type,
        id2label={str(i): label for i, label in enumerate(config.labels)},
        label2id={label: i for i, label in enumerate(config.labels)},
        **extra,
    )
    return hf


def init_normal(config):
    return nn.initializers.normal(stddev=config.initializer_range)


def partitioned(init, names):
    return nn.with_logical_partitioning(init, names)


def constrain(x, names):
    """Logical sharding constraint on an activation (a no-op outside a mesh with rules)."""
    return nn.with_logical_constraint(x, names)


def dense(config, features: int, axes, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=partitioned(init_normal(config), axes),
        bias_init=partitioned(nn.initializers.zeros, axes[1:]),
        name=name,
    )


def layer_norm(config, name: str = "LayerNorm", axis_name: str = "embed") -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        scale_init=partitioned(nn.initializers.ones, (axis_name,)),
        bias_init=partitioned(nn.initializers.zeros, (axis_name,)),
        name=name,
    )


def embed(config, num: int, features: int, axes, name: str | None = None) -> nn.Embed:
    return nn.Embed(
        num,
        features,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        embedding_init=partitioned(init_normal(config), axes),
        name=name,
    )


def lookup(table: nn.Embed, ids_BxL: jax.Array, padding_idx: int | None) -> jax.Array:
    """``table(ids)`` as HF's ``nn.Embedding(padding_idx=...)`` computes it: the padding row is
    read as usual, but the lookup sends it no gradient, so fine-tuning never moves it through
    padded positions (heads that read every position, such as QA's, would otherwise). A tied
    decoder that uses the whole table still trains the row, as in HF."""
    x = table(ids_BxL)
    if padding_idx is None:
        return x
    return jnp.where((ids_BxL == padding_idx)[..., None], jax.lax.stop_gradient(x), x)


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Dropout keep-mask of ``shape``: True with probability ``1 - rate`` (to 1/65536).

    ``jax.random.bernoulli`` (flax's ``nn.Dropout``) runs one threefry2x32 hash per element and
    keeps a 32-bit word of its 64-bit output. Here every hash gives four elements their 16-bit
    lanes, compared with an integer threshold: a quarter of the hashing, no float conversion. On
    CPU that makes the attention-probability mask of a 32 x 128 MiniLM step 2.6x cheaper
    (bench/RESULTS.md §12). The counter is an iota over the words, as jax's partitionable
    threefry builds it, so a sharded mask is drawn shard by shard.

    Falls back to ``jax.random.bernoulli`` where the last axis is not a multiple of 4 or the key
    is not a threefry key.
    """
    *lead, last = shape
    words = (*lead, last // 4)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(key)
    else:  # a raw uint32[2] key
        data = key
    if last % 4 or data.shape != (2,) or data.dtype != jnp.uint32 or math.prod(words) >= 2**32:
        return jax.random.bernoulli(key, 1.0 - rate, shape)
    counter = jnp.zeros(words, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(words))):
        counter += jax.lax.broadcasted_iota(jnp.uint32, words, axis) * jnp.uint32(stride)
        stride *= words[axis]
    hi, lo = threefry2x32_p.bind(data[0], data[1], jnp.zeros(words, jnp.uint32), counter)
    low16 = jnp.uint32(0xFFFF)
    lanes = jnp.stack([hi & low16, hi >> 16, lo & low16, lo >> 16], axis=-1).reshape(shape)
    return lanes >= jnp.uint32(round(rate * 65536))


class Dropout(nn.Module):
    """``nn.Dropout(rate)(x, deterministic=...)`` with :func:`keep_mask`'s cheaper mask: the same
    ``dropout`` rng collection and ``1 / (1 - rate)`` scaling; a different random stream."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


def as_attention_mask(attention_mask_BxL) -> jax.Array:
    """A ``[B, L]`` padding mask, or a ``[B, L, L]`` one (packed rows: block-diagonal), as the
    ``[B, 1, Lq, Lk]`` boolean mask :func:`attend` takes."""
    mask = attention_mask_BxL.astype(bool)
    return mask[:, None, None, :] if mask.ndim == 2 else mask[:, None, :, :]


def attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask_Bx1xLxL, *, dropout_rate: float,
           deterministic: bool, dropout_module=None) -> jax.Array:
    """Scaled dot-product attention; returns ``[B, L, H, K]``.

    Without dropout it is ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU when
    shapes allow, XLA elsewhere). Dropout on the attention probabilities (as BERT-family models
    were trained) needs the explicit form.
    """
    if deterministic or dropout_rate == 0.0:
        return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask=mask_Bx1xLxL)
    # The scale on q ([B, L, H, K]) and the mask as an additive [B, 1, Lq|1, Lk] bias, as HF's
    # eager attention adds its mask: one add over [B, H, L, L] instead of a divide and a select
    # against a broadcast mask (1.7x cheaper on CPU, bench/RESULTS.md §3).
    K = q_BxLxHxK.shape[-1]
    scaled_q_BxLxHxK = q_BxLxHxK * jnp.asarray(K ** -0.5, q_BxLxHxK.dtype)
    bias_Bx1xLxL = jnp.where(mask_Bx1xLxL, 0.0, jnp.finfo(q_BxLxHxK.dtype).min).astype(q_BxLxHxK.dtype)
    logits_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", scaled_q_BxLxHxK, k_BxLxHxK) + bias_Bx1xLxL
    probs_BxHxLxL = jax.nn.softmax(logits_BxHxLxL.astype(jnp.float32), axis=-1)
    probs_BxHxLxL = dropout_module(probs_BxHxLxL, deterministic=False)
    return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxLxL.astype(v_BxLxHxK.dtype), v_BxLxHxK)


def check_length(config, input_ids) -> None:
    L = input_ids.shape[-1]
    if L > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {L} exceeds max_position_embeddings={config.max_position_embeddings}"
        )


def flatten_choices(input_ids, attention_mask, token_type_ids, position_ids):
    """Multiple-choice inputs as the trunk's rows: ``[B, C, L]`` arrays (``[B, C, L, L]`` masks)
    become ``[B*C, L]`` (HF's ``view(-1, L)``), example b's choices rows ``b*C ... b*C + C-1``.

    Returns ``(C, (input_ids, attention_mask, token_type_ids, position_ids))``, None kept as None.
    ``[B, L]`` inputs count as one choice each (``C = 1``), so ``model.init`` with plain rows works.
    """
    if input_ids.ndim == 2:
        return 1, (input_ids, attention_mask, token_type_ids, position_ids)
    num_choices = input_ids.shape[1]

    def rows(x):
        return None if x is None else x.reshape((-1,) + x.shape[2:])

    return num_choices, tuple(rows(x) for x in (input_ids, attention_mask, token_type_ids, position_ids))
