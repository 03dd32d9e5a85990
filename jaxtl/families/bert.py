"""BERT: the trunk and its heads as Flax linen modules with Hugging Face parameter names.

The parameter tree mirrors Hugging Face's ``BertFor...`` classes (``bert/embeddings/
word_embeddings``, ``bert/encoder/layer/{i}/attention/self/query``, ``LayerNorm``,
``bert/pooler/dense``, ``cls/predictions``, ``classifier``), so converting a checkpoint is a
rename table plus kernel transposes (see :mod:`jaxtl.hf`). Models return a dict of named arrays:

* :class:`BertModel` -> ``last_hidden_state [B, L, D]``, ``pooler_output [B, D]``
* :class:`BertForPreTraining` -> ``mlm_logits [B, L, V]`` (``[B, P, V]`` when
  ``masked_positions [B, P]`` is given), ``nsp_logits [B, 2]``
* :class:`BertForSequenceClassification` -> ``logits [B, num_labels]``
* :class:`BertForMultipleChoice` -> ``logits [B, C]`` (one score per choice; inputs ``[B, C, L]``)

Call them as ``model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
deterministic=True)``; optional ``position_ids [B, L]`` (default ``0..L-1``) and an
``attention_mask`` of ``[B, L, L]`` express packed rows. With ``deterministic=False`` pass
``rngs={"dropout": key}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from jaxtl.families import FamilySpec, register
from jaxtl.families.layers import (
    ACTIVATIONS, Dropout, as_attention_mask, attend, check_common, check_length, config_from_hf, config_to_hf,
    constrain, dense, embed, flatten_choices, layer_norm, lookup, partitioned,
)

# Hugging Face config fields jaxtl does not implement; a checkpoint that sets them to anything but
# the listed value is refused instead of being silently computed differently.
UNSUPPORTED_HF_FIELDS = {
    "position_embedding_type": ("absolute", None),
    "is_decoder": (False, None),
    "add_cross_attention": (False, None),
    "chunk_size_feed_forward": (0, None),
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
        check_common(self)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "BertConfig":
        """Build from a Hugging Face ``config.json`` dict; refuses what jaxtl cannot compute."""
        return config_from_hf(cls, hf, source, UNSUPPORTED_HF_FIELDS, **overrides)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` fields for this architecture."""
        return config_to_hf(self, "bert", position_embedding_type="absolute")


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout; ``[B, L, features]``.

    ``features`` defaults to ``hidden_size``; ALBERT and ELECTRA embed at ``embedding_size``
    and project to the hidden size after this module."""

    config: BertConfig
    features: int | None = None

    def setup(self):
        c = self.config
        E = self.features or c.hidden_size
        self.word_embeddings = embed(c, c.vocab_size, E, ("vocab", "embed"))
        self.position_embeddings = embed(c, c.max_position_embeddings, E, (None, "embed"))
        self.token_type_embeddings = embed(c, c.type_vocab_size, E, (None, "embed"))
        self.LayerNorm = layer_norm(c)
        self.dropout = Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids_BxL, token_type_ids_BxL, position_ids_BxL, deterministic):
        L = input_ids_BxL.shape[1]
        if position_ids_BxL is None:
            # Positions 0..L-1 (HF's default position_ids): a slice, not a gather, which
            # shards cleanly.
            positions = self.position_embeddings.embedding[None, :L].astype(self.config.dtype)
        else:
            # RoBERTa's position table has a padding row too (its padding tokens' position).
            positions = lookup(self.position_embeddings, position_ids_BxL,
                               getattr(self.config, "positions_padding_idx", None))
        x_BxLxD = (
            lookup(self.word_embeddings, input_ids_BxL, self.config.pad_token_id) + positions
            + self.token_type_embeddings(token_type_ids_BxL)
        )
        x_BxLxD = self.LayerNorm(x_BxLxD)
        x_BxLxD = self.dropout(x_BxLxD, deterministic=deterministic)
        return constrain(x_BxLxD, ("batch", "length", "embed"))


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        c = self.config
        B, L, _ = x_BxLxD.shape
        H, K = c.num_attention_heads, c.head_dim

        def heads(name):
            y = dense(c, c.hidden_size, ("embed", "heads"), name)(x_BxLxD)
            return constrain(y.reshape(B, L, H, K), ("batch", "length", "heads", "kv"))

        out_BxLxHxK = attend(
            heads("query"), heads("key"), heads("value"), mask_Bx1xLxL,
            dropout_rate=c.attention_probs_dropout_prob, deterministic=deterministic,
            dropout_module=Dropout(c.attention_probs_dropout_prob),
        )
        return out_BxLxHxK.reshape(B, L, H * K)


class BertResidual(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): HF's BertSelfOutput and BertOutput."""

    config: BertConfig
    axes: tuple[str, str]

    def setup(self):
        c = self.config
        self.dense = dense(c, c.hidden_size, self.axes, "dense")
        self.dropout = Dropout(c.hidden_dropout_prob)
        self.LayerNorm = layer_norm(c)

    def __call__(self, h, residual_BxLxD, deterministic):
        h_BxLxD = self.dropout(self.dense(h), deterministic=deterministic)
        out_BxLxD = self.LayerNorm(h_BxLxD + residual_BxLxD)
        return constrain(out_BxLxD, ("batch", "length", "embed"))


class BertAttention(nn.Module):
    config: BertConfig

    def setup(self):
        self.self = BertSelfAttention(self.config)
        self.output = BertResidual(self.config, ("heads", "embed"))

    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        attn_BxLxD = self.self(x_BxLxD, mask_Bx1xLxL, deterministic)
        return self.output(attn_BxLxD, x_BxLxD, deterministic)


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

    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        x_BxLxD = self.attention(x_BxLxD, mask_Bx1xLxL, deterministic)
        return self.output(self.intermediate(x_BxLxD), x_BxLxD, deterministic)


class BertLayerCollection(nn.Module):
    """The layers, named ``0``, ``1``, ... under ``encoder/layer`` as in Hugging Face."""

    config: BertConfig
    layer_cls: type = None  # the family's layer module (BERT's by default; RoBERTa/ELECTRA reuse)

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        c = self.config
        layer_cls = self.layer_cls or BertLayer
        if c.remat:
            layer_cls = nn.remat(layer_cls, static_argnums=(3,))
        for i in range(c.num_hidden_layers):
            x_BxLxD = layer_cls(c, name=str(i))(x_BxLxD, mask_Bx1xLxL, deterministic)
        return x_BxLxD


class BertEncoder(nn.Module):
    config: BertConfig

    def setup(self):
        self.layer = BertLayerCollection(self.config)

    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        return self.layer(x_BxLxD, mask_Bx1xLxL, deterministic)


class BertPooler(nn.Module):
    """tanh(dense) of the first token ``[B, D]``, or of ``cls_positions [B, P]`` (packed rows:
    each example's [CLS]) -> ``[B, P, D]``."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD, cls_positions_BxP=None):
        c = self.config
        cls_BxD = first_token(x_BxLxD, cls_positions_BxP)
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

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, cls_positions=None):
        """Returns ``(last_hidden_state [B, L, D], pooler_output [B, D] or None)``; the pooler
        output is ``[B, P, D]`` at ``cls_positions [B, P]`` when they are given (packed rows)."""
        check_length(self.config, input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x_BxLxD = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        x_BxLxD = self.encoder(x_BxLxD, as_attention_mask(attention_mask), deterministic)
        pooled_BxD = self.pooler(x_BxLxD, cls_positions) if self.add_pooler else None
        return x_BxLxD, pooled_BxD


class BertModel(nn.Module):
    """The bare trunk: HF's ``BertModel``."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        hidden, pooled = BertTrunk(self.config, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        return {"last_hidden_state": hidden, "pooler_output": pooled}


class BertPredictionHeadTransform(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, h):
        c = self.config
        h = ACTIVATIONS[c.hidden_act](dense(c, c.hidden_size, ("embed", "mlp"), "dense")(h))
        return layer_norm(c)(h)


class BertLMPredictionHead(nn.Module):
    """transform -> decoder tied to the word embeddings -> + bias (HF ``cls/predictions``)."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden_BxPxD, word_embeddings_VxD):
        c = self.config
        h_BxPxD = BertPredictionHeadTransform(c, name="transform")(hidden_BxPxD)
        return tied_decoder(self, c, h_BxPxD, word_embeddings_VxD)


def tied_decoder(module: nn.Module, c, h_BxPxD, word_embeddings_VxD):
    """Logits over the vocabulary from the tied word embeddings plus a ``bias`` of ``module``."""
    # Pin the decoder input to batch-sharded, embed-replicated. Left to propagation, the
    # backward of this einsum on a data x fsdp x tensor mesh with all three axes > 1 and few
    # masked positions (P <= 4) is partitioned wrongly by XLA (silently wrong gradients for
    # the whole trunk; tests/test_sharding.py checks the 2x2x2 mesh against one device).
    h_BxPxD = constrain(h_BxPxD, ("batch", "length", "embed"))
    bias_V = module.param(
        "bias", partitioned(nn.initializers.zeros, ("vocab",)), (c.vocab_size,), jnp.dtype(c.param_dtype)
    )
    logits_BxPxV = jnp.einsum(
        "bpd,vd->bpv", h_BxPxD, word_embeddings_VxD.astype(h_BxPxD.dtype)
    ) + bias_V.astype(h_BxPxD.dtype)
    return constrain(logits_BxPxV, ("batch", "length", "vocab"))


def gather_positions(hidden_BxLxD, masked_positions_BxP):
    """Only the masked positions go through the vocabulary projection (as in the original BERT
    code): the decoder is the most expensive matmul of a small model."""
    if masked_positions_BxP is None:
        return hidden_BxLxD
    return jnp.take_along_axis(hidden_BxLxD, masked_positions_BxP[..., None], axis=1)


def first_token(hidden_BxLxD, cls_positions_BxP=None):
    """The hidden state a sequence-classification head reads: the first token ``[B, D]``, or
    with ``cls_positions [B, P]`` (packed rows, several examples each) every example's first
    token ``[B, P, D]``."""
    if cls_positions_BxP is None:
        return hidden_BxLxD[:, 0]
    return gather_positions(hidden_BxLxD, cls_positions_BxP)


class BertPreTrainingHeads(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden_BxPxD, pooled_BxD, word_embeddings_VxD):
        mlm_logits = BertLMPredictionHead(self.config, name="predictions")(
            hidden_BxPxD, word_embeddings_VxD
        )
        nsp_logits = dense(self.config, 2, ("embed", None), "seq_relationship")(pooled_BxD)
        return mlm_logits, nsp_logits


class BertForPreTraining(nn.Module):
    """Masked-LM head (transform + decoder tied to the word embeddings + bias) and NSP head."""

    config: BertConfig

    def setup(self):
        self.bert = BertTrunk(self.config)
        self.cls = BertPreTrainingHeads(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, masked_positions=None):
        hidden_BxLxD, pooled_BxD = self.bert(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        hidden_BxPxD = gather_positions(hidden_BxLxD, masked_positions)
        word_embeddings_VxD = self.bert.embeddings.word_embeddings.embedding
        mlm_logits, nsp_logits = self.cls(hidden_BxPxD, pooled_BxD, word_embeddings_VxD)
        return {"mlm_logits": mlm_logits, "nsp_logits": nsp_logits}


class BertForSequenceClassification(nn.Module):
    """pooler -> dropout -> dense; one label means regression (HF's ``num_labels=1``).
    With ``cls_positions [B, P]`` (packed rows) ``logits`` are ``[B, P, num_labels]``."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, cls_positions=None):
        c = self.config
        _, pooled_BxD = BertTrunk(c, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids, cls_positions
        )
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        pooled_BxD = Dropout(rate)(pooled_BxD, deterministic=deterministic)
        logits = dense(c, c.num_labels, ("embed", None), "classifier")(pooled_BxD)
        return {"logits": logits}


class BertForMultipleChoice(nn.Module):
    """Every choice through the trunk: pooler -> dropout -> ``classifier`` (hidden -> 1); an
    example's C scores are its ``logits [B, C]`` (HF's ``BertForMultipleChoice``; softmax over
    the choices). Inputs ``[B, C, L]`` (see :func:`flatten_choices`)."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        c = self.config
        num_choices, rows = flatten_choices(input_ids, attention_mask, token_type_ids, position_ids)
        ids, mask, types, positions = rows
        _, pooled_NxD = BertTrunk(c, name="bert")(ids, mask, types, deterministic, positions)
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        pooled_NxD = Dropout(rate)(pooled_NxD, deterministic=deterministic)
        scores_Nx1 = dense(c, 1, ("embed", None), "classifier")(pooled_NxD)
        return {"logits": scores_Nx1.reshape(-1, num_choices)}


def layer_depth(path: tuple[str, ...], num_layers: int) -> int:
    """0 for embeddings, i+1 for encoder layer i, num_layers+1 for pooler and heads."""
    if path[1:2] == ("embeddings",):
        return 0
    if path[1:3] == ("encoder", "layer"):
        return int(path[3]) + 1
    return num_layers + 1


def _size(layers: int, hidden: int, heads: int) -> dict:
    return dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                intermediate_size=4 * hidden)


# Published BERT sizes (Turc et al. 2019 for the small ones; Devlin et al. 2019 for base/large).
PRESETS = {
    "tiny": _size(2, 128, 2),
    "mini": _size(4, 256, 4),
    "small": _size(4, 512, 8),
    "medium": _size(8, 512, 8),
    "base": _size(12, 768, 12),
    "large": _size(24, 1024, 16),
}

SPEC = register(FamilySpec(
    name="bert",
    model_types=("bert",),
    config_cls=BertConfig,
    trunk="bert",
    models={
        None: (BertModel, "BertModel"),
        "pretraining": (BertForPreTraining, "BertForPreTraining"),
        "classification": (BertForSequenceClassification, "BertForSequenceClassification"),
        "multiple_choice": (BertForMultipleChoice, "BertForMultipleChoice"),
    },
    head_prefixes=("cls.predictions.", "cls.seq_relationship.", "classifier."),
    layer_depth=layer_depth,
    optional_prefixes=("bert.pooler.",),
    ignored=(
        "bert.embeddings.position_ids",  # a buffer in older checkpoints
        "cls.predictions.decoder.weight",  # tied to the word embeddings
        "cls.predictions.decoder.bias",  # tied to cls.predictions.bias
    ),
    presets=PRESETS,
    trunk_module=lambda config, name: BertTrunk(config, add_pooler=False, name=name),
    hf_prefix="Bert",
))
