"""The BERT trunk as Flax linen modules, with Hugging Face parameter names.

The parameter tree mirrors Hugging Face's ``BertModel`` (``embeddings/word_embeddings``,
``encoder/layer/{i}/attention/self/query``, ``LayerNorm``, ``pooler/dense``), so converting a
checkpoint is a rename table plus kernel transposes (see :mod:`jaxtl.hf`).

Every parameter carries logical axis names (``vocab``, ``embed``, ``heads``, ``mlp``, ...) and the
main activations carry logical constraints (``batch``, ``length``, ``embed``, ``heads``); the rules
in :mod:`jaxtl.sharding` map them onto a device mesh. Outside a mesh they are no-ops.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxtl.errors import ConfigError

# Hugging Face config fields jaxtl does not implement; a checkpoint that sets them to anything but
# the listed value is refused instead of being silently computed differently.
UNSUPPORTED_HF_FIELDS = {
    "position_embedding_type": ("absolute", None),
    "is_decoder": (False, None),
    "add_cross_attention": (False, None),
    "chunk_size_feed_forward": (0, None),
}

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU, as torch's nn.GELU()
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # the tanh approximation
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT model; the field names are Hugging Face's ``BertConfig`` ones."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob, as HF does
    # Classification labels, in id order; one label means regression. Kept as a tuple so the
    # config stays hashable (it is a module attribute).
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")
    problem_type: str | None = None  # HF's field: "regression" / "single_label_classification"
    # jaxtl-only fields: not architecture, but how the model computes.
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of the parameters
    remat: bool = False  # recompute each encoder layer in the backward pass (saves memory)

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ConfigError(f"{name}={getattr(self, name)!r}: use float32, bfloat16 or float16")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "BertConfig":
        """Build from a Hugging Face ``config.json`` dict; refuses what jaxtl cannot compute."""
        model_type = hf.get("model_type", "bert")
        if model_type != "bert":
            raise ConfigError(
                f"{source}: model_type is {model_type!r}; jaxtl loads BERT checkpoints "
                "(model_type 'bert')"
            )
        for key, allowed in UNSUPPORTED_HF_FIELDS.items():
            if key in hf and hf[key] not in allowed:
                raise ConfigError(
                    f"{source}: {key}={hf[key]!r} is not supported by jaxtl "
                    f"(only {allowed[0]!r}); refusing rather than computing something else"
                )
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in fields and k not in ("dtype", "labels")}
        id2label = hf.get("id2label")
        if id2label:
            kwargs["labels"] = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        elif "num_labels" in hf:
            kwargs["labels"] = tuple(f"LABEL_{i}" for i in range(int(hf["num_labels"])))
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ConfigError as e:  # e.g. an unsupported hidden_act: say which file holds it
            raise ConfigError(f"{source}: {e}") from None

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` fields for this architecture."""
        hf = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("labels", "dtype", "param_dtype", "remat")
        }
        if hf["problem_type"] is None:
            hf.pop("problem_type")
        hf.update(
            model_type="bert",
            position_embedding_type="absolute",
            id2label={str(i): label for i, label in enumerate(self.labels)},
            label2id={label: i for i, label in enumerate(self.labels)},
        )
        return hf


# Published BERT sizes (Turc et al. 2019 for the small ones; Devlin et al. 2019 for base/large).
PRESETS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8),
    "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16),
}


def preset(name: str, **overrides) -> BertConfig:
    """A published BERT size by name (``tiny`` ... ``large``); intermediate size is 4x hidden."""
    if name not in PRESETS:
        raise ConfigError(f"model size {name!r} is unknown; use one of {sorted(PRESETS)}")
    sizes = dict(PRESETS[name])
    sizes["intermediate_size"] = 4 * sizes["hidden_size"]
    sizes.update(overrides)
    return BertConfig(**sizes)


def init_normal(config: BertConfig):
    return nn.initializers.normal(stddev=config.initializer_range)


def partitioned(init, names):
    return nn.with_logical_partitioning(init, names)


def constrain(x, names):
    """Logical sharding constraint on an activation (a no-op outside a mesh with rules)."""
    return nn.with_logical_constraint(x, names)


def dense(config: BertConfig, features: int, axes, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.compute_dtype,
        param_dtype=config.storage_dtype,
        kernel_init=partitioned(init_normal(config), axes),
        bias_init=partitioned(nn.initializers.zeros, axes[1:]),
        name=name,
    )


def layer_norm(config: BertConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=config.storage_dtype,
        scale_init=partitioned(nn.initializers.ones, ("embed",)),
        bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class BertEmbeddings(nn.Module):
    config: BertConfig

    def setup(self):
        c = self.config
        embed = lambda n, axes: nn.Embed(  # noqa: E731
            n,
            c.hidden_size,
            dtype=c.compute_dtype,
            param_dtype=c.storage_dtype,
            embedding_init=partitioned(init_normal(c), axes),
        )
        self.word_embeddings = embed(c.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(c.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = embed(c.type_vocab_size, (None, "embed"))
        self.LayerNorm = layer_norm(c)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids_BxL, token_type_ids_BxL, deterministic):
        L = input_ids_BxL.shape[1]
        # Positions are 0..L-1 (HF's default position_ids): a slice, not a gather, which
        # shards cleanly.
        positions_1xLxD = self.position_embeddings.embedding[None, :L].astype(self.config.compute_dtype)
        x_BxLxD = (
            self.word_embeddings(input_ids_BxL)
            + positions_1xLxD
            + self.token_type_embeddings(token_type_ids_BxL)
        )
        x_BxLxD = self.LayerNorm(x_BxLxD)
        x_BxLxD = self.dropout(x_BxLxD, deterministic=deterministic)
        return constrain(x_BxLxD, ("batch", "length", "embed"))


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL, deterministic):
        c = self.config
        B, L, _ = x_BxLxD.shape
        H, K = c.num_attention_heads, c.head_dim

        def heads(name):
            y = dense(c, c.hidden_size, ("embed", "heads"), name)(x_BxLxD)
            return constrain(y.reshape(B, L, H, K), ("batch", "length", "heads", "kv"))

        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = heads("query"), heads("key"), heads("value")
        rate = c.attention_probs_dropout_prob
        if deterministic or rate == 0.0:
            # Fused attention: cuDNN flash attention on GPU when shapes allow, XLA elsewhere.
            out_BxLxHxK = jax.nn.dot_product_attention(
                q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask=mask_Bx1x1xL
            )
        else:
            # Dropout on the attention probabilities (as BERT was trained) needs the explicit form.
            logits_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxLxHxK) / jnp.sqrt(
                jnp.asarray(K, q_BxLxHxK.dtype)
            )
            big_neg = jnp.finfo(logits_BxHxLxL.dtype).min
            logits_BxHxLxL = jnp.where(mask_Bx1x1xL, logits_BxHxLxL, big_neg)
            probs_BxHxLxL = jax.nn.softmax(logits_BxHxLxL.astype(jnp.float32), axis=-1)
            probs_BxHxLxL = nn.Dropout(rate)(probs_BxHxLxL, deterministic=False)
            out_BxLxHxK = jnp.einsum(
                "bhqs,bshk->bqhk", probs_BxHxLxL.astype(v_BxLxHxK.dtype), v_BxLxHxK
            )
        return out_BxLxHxK.reshape(B, L, H * K)


class BertAttention(nn.Module):
    config: BertConfig

    def setup(self):
        c = self.config
        self.self = BertSelfAttention(c)
        self.output = BertResidual(c, ("heads", "embed"))

    def __call__(self, x_BxLxD, mask_Bx1x1xL, deterministic):
        attn_BxLxD = self.self(x_BxLxD, mask_Bx1x1xL, deterministic)
        return self.output(attn_BxLxD, x_BxLxD, deterministic)


class BertResidual(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): HF's BertSelfOutput and BertOutput."""

    config: BertConfig
    axes: tuple[str, str]

    def setup(self):
        c = self.config
        self.dense = dense(c, c.hidden_size, self.axes, "dense")
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.LayerNorm = layer_norm(c)

    def __call__(self, h, residual_BxLxD, deterministic):
        h_BxLxD = self.dropout(self.dense(h), deterministic=deterministic)
        out_BxLxD = self.LayerNorm(h_BxLxD + residual_BxLxD)
        return constrain(out_BxLxD, ("batch", "length", "embed"))


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        c = self.config
        h_BxLxF = dense(c, c.intermediate_size, ("embed", "mlp"), "dense")(x_BxLxD)
        h_BxLxF = ACTIVATIONS[c.hidden_act](h_BxLxF)
        return constrain(h_BxLxF, ("batch", "length", "mlp"))


class BertLayer(nn.Module):
    config: BertConfig

    def setup(self):
        c = self.config
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertResidual(c, ("mlp", "embed"))

    def __call__(self, x_BxLxD, mask_Bx1x1xL, deterministic):
        x_BxLxD = self.attention(x_BxLxD, mask_Bx1x1xL, deterministic)
        return self.output(self.intermediate(x_BxLxD), x_BxLxD, deterministic)


class BertLayerCollection(nn.Module):
    """The layers, named ``0``, ``1``, ... under ``encoder/layer`` as in Hugging Face."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL, deterministic):
        c = self.config
        layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if c.remat else BertLayer
        for i in range(c.num_hidden_layers):
            x_BxLxD = layer_cls(c, name=str(i))(x_BxLxD, mask_Bx1x1xL, deterministic)
        return x_BxLxD


class BertEncoder(nn.Module):
    config: BertConfig

    def setup(self):
        self.layer = BertLayerCollection(self.config)

    def __call__(self, x_BxLxD, mask_Bx1x1xL, deterministic):
        return self.layer(x_BxLxD, mask_Bx1x1xL, deterministic)


class BertPooler(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        c = self.config
        cls_BxD = x_BxLxD[:, 0]
        return jnp.tanh(dense(c, c.hidden_size, ("embed", "mlp"), "dense")(cls_BxD))


class BertTrunk(nn.Module):
    """Embeddings, encoder and (optionally) pooler: HF's ``BertModel``."""

    config: BertConfig
    add_pooler: bool = True

    def setup(self):
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        if self.add_pooler:
            self.pooler = BertPooler(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        """Returns ``(last_hidden_state [B, L, D], pooler_output [B, D] or None)``."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        L = input_ids.shape[-1]
        if L > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {L} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        x_BxLxD = self.embeddings(input_ids, token_type_ids, deterministic)
        mask_Bx1x1xL = attention_mask.astype(bool)[:, None, None, :]
        x_BxLxD = self.encoder(x_BxLxD, mask_Bx1x1xL, deterministic)
        pooled_BxD = self.pooler(x_BxLxD) if self.add_pooler else None
        return x_BxLxD, pooled_BxD
