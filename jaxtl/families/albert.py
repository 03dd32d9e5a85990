"""ALBERT: factorized embeddings and layers shared across depth, as Flax linen modules with
Hugging Face parameter names.

What differs from BERT (Lan et al. 2019, HF ``modeling_albert.py``):

* the embeddings are ``embedding_size`` (E) wide; ``encoder/embedding_hidden_mapping_in``
  projects them to ``hidden_size`` (D);
* the encoder holds ``num_hidden_groups`` groups of ``inner_group_num`` layers
  (``albert/encoder/albert_layer_groups/{g}/albert_layers/{i}/...``); layer ``l`` of the
  ``num_hidden_layers`` runs group ``int(l / (num_hidden_layers / num_hidden_groups))``, so
  one group's parameters are applied several times (the same linen submodule called again);
* a layer is ``attention`` (query/key/value/dense/LayerNorm in one module) then
  ``ffn`` -> activation -> ``ffn_output`` -> ``full_layer_layer_norm`` (HF applies no dropout
  after the feed-forward, and neither does jaxtl);
* the pooler is one linear ``albert/pooler`` (+ tanh); the masked-LM head ``predictions``
  (dense D -> E, activation, LayerNorm, decoder tied to the E-wide word embeddings, ``bias``);
  the sentence-order-prediction head ``sop_classifier/classifier``.

Models return dicts of named arrays:

* :class:`AlbertModel` -> ``last_hidden_state [B, L, D]``, ``pooler_output [B, D]``
* :class:`AlbertForPreTraining` -> ``mlm_logits [B, L, V]`` (``[B, P, V]`` with
  ``masked_positions [B, P]``), ``sop_logits [B, num_labels]`` (HF sizes the SOP head by
  ``num_labels``, 2 for pretraining checkpoints)
* :class:`AlbertForSequenceClassification` -> ``logits [B, num_labels]``
* :class:`AlbertForMultipleChoice` -> ``logits [B, C]`` (one score per choice; inputs ``[B, C, L]``)

Depth for freezing and layer-wise lr decay (:func:`layer_depth`): the embeddings and
``embedding_hidden_mapping_in`` are depth 0, group ``g`` is depth ``g + 1`` (a shared group is one
set of weights, so it has one depth), pooler and heads ``num_hidden_layers + 1``. Hence
``optim.freeze: [layers:K]`` freezes the embeddings and the first K *groups*: with the usual single
group (every published ALBERT), ``layers:1`` freezes the whole encoder, and K > 1 freezes nothing
more. With ``num_hidden_groups == num_hidden_layers`` (no sharing) groups are layers, as in BERT.
Layer-wise decay gives group ``g`` ``lr * decay^(num_hidden_layers - g)``: the single shared group
of a 12-layer ALBERT gets ``decay^12``, so keep the decay mild (or 1.0) for ALBERT.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from jaxtl.errors import ConfigError
from jaxtl.families import FamilySpec, register
from jaxtl.families.bert import BertEmbeddings, first_token, gather_positions, tied_decoder
from jaxtl.families.layers import (
    ACTIVATIONS, Dropout, as_attention_mask, attend, check_common, check_length, config_from_hf, config_to_hf,
    constrain, dense, flatten_choices, layer_norm,
)

# Hugging Face config fields jaxtl does not implement; a checkpoint that sets them to anything but
# the listed values is refused instead of being silently computed differently. (HF's
# chunk_size_feed_forward is not listed: chunking the feed-forward changes memory, not numbers.)
UNSUPPORTED_HF_FIELDS = {
    "position_embedding_type": ("absolute", None),
    "tie_word_embeddings": (True, None),  # jaxtl's decoder is always the word embeddings
    "is_decoder": (False, None),
    "add_cross_attention": (False, None),
}
# HF field name -> jaxtl's standard field name.
RENAMES = {"classifier_dropout_prob": "classifier_dropout"}


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
    """Architecture of an ALBERT model; fields and defaults are HF's ``AlbertConfig`` ones
    (``config.json`` leaves defaults out), except ``classifier_dropout`` (HF:
    ``classifier_dropout_prob``)."""

    vocab_size: int = 30000
    embedding_size: int = 128  # E: width of the embeddings and of the MLM decoder
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1  # groups of shared layers
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1  # layers in one group
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = 0.1  # classifier and SOP head; None: hidden_dropout_prob
    # Classification labels in id order; one label means regression.
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")
    problem_type: str | None = None
    # jaxtl-only fields: not architecture, but how the model computes.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False  # recompute each layer application in the backward pass

    def __post_init__(self):
        check_common(self)
        if not 1 <= self.num_hidden_groups <= self.num_hidden_layers:
            raise ConfigError(
                f"num_hidden_groups={self.num_hidden_groups} must be between 1 and "
                f"num_hidden_layers={self.num_hidden_layers}"
            )
        if self.inner_group_num < 1:
            raise ConfigError(f"inner_group_num={self.inner_group_num} must be at least 1")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def classifier_dropout_rate(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    def group_of_layer(self, layer: int) -> int:
        """The group whose weights layer ``layer`` runs (HF's formula, float division included)."""
        return int(layer / (self.num_hidden_layers / self.num_hidden_groups))

    def replace(self, **changes) -> "AlbertConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "AlbertConfig":
        """Build from a Hugging Face ``config.json`` dict; refuses what jaxtl cannot compute."""
        return config_from_hf(cls, hf, source, UNSUPPORTED_HF_FIELDS, renames=RENAMES, **overrides)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` fields for this architecture."""
        hf = config_to_hf(self, "albert", renames=RENAMES, tie_word_embeddings=True)
        # HF's AlbertConfig takes a number only.
        hf["classifier_dropout_prob"] = self.classifier_dropout_rate
        return hf



class AlbertAttention(nn.Module):
    """Self-attention, output dense, dropout and LayerNorm(x + attention): HF's AlbertAttention."""

    config: AlbertConfig

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
        h_BxLxD = dense(c, c.hidden_size, ("heads", "embed"), "dense")(out_BxLxHxK.reshape(B, L, H * K))
        h_BxLxD = Dropout(c.hidden_dropout_prob)(h_BxLxD, deterministic=deterministic)
        return constrain(layer_norm(c)(x_BxLxD + h_BxLxD), ("batch", "length", "embed"))


class AlbertLayer(nn.Module):
    config: AlbertConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        c = self.config
        attn_BxLxD = AlbertAttention(c, name="attention")(x_BxLxD, mask_Bx1xLxL, deterministic)
        h_BxLxF = ACTIVATIONS[c.hidden_act](dense(c, c.intermediate_size, ("embed", "mlp"), "ffn")(attn_BxLxD))
        h_BxLxF = constrain(h_BxLxF, ("batch", "length", "mlp"))
        h_BxLxD = dense(c, c.hidden_size, ("mlp", "embed"), "ffn_output")(h_BxLxF)
        out_BxLxD = layer_norm(c, "full_layer_layer_norm")(h_BxLxD + attn_BxLxD)
        return constrain(out_BxLxD, ("batch", "length", "embed"))


class AlbertLayers(nn.Module):
    """One group's ``inner_group_num`` layers, named ``0``, ``1``, ... (HF ``albert_layers``)."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        c = self.config
        layer_cls = nn.remat(AlbertLayer, static_argnums=(3,)) if c.remat else AlbertLayer
        for i in range(c.inner_group_num):
            x_BxLxD = layer_cls(c, name=str(i))(x_BxLxD, mask_Bx1xLxL, deterministic)
        return x_BxLxD


class AlbertLayerGroup(nn.Module):
    config: AlbertConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        return AlbertLayers(self.config, name="albert_layers")(x_BxLxD, mask_Bx1xLxL, deterministic)


class AlbertLayerGroups(nn.Module):
    """The ``num_hidden_groups`` groups (named ``0``, ``1``, ...) run over ``num_hidden_layers``
    layers: each group module is built once and called for every layer it serves, so its
    parameters are shared and their gradients add up over the calls, as in HF."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        c = self.config
        groups = [AlbertLayerGroup(c, name=str(g)) for g in range(c.num_hidden_groups)]
        for layer in range(c.num_hidden_layers):
            x_BxLxD = groups[c.group_of_layer(layer)](x_BxLxD, mask_Bx1xLxL, deterministic)
        return x_BxLxD


class AlbertTransformer(nn.Module):
    """E -> D projection, then the shared layer groups: HF's AlbertTransformer (``encoder``)."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x_BxLxE, mask_Bx1xLxL, deterministic):
        c = self.config
        x_BxLxD = dense(c, c.hidden_size, (None, "embed"), "embedding_hidden_mapping_in")(x_BxLxE)
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"))
        return AlbertLayerGroups(c, name="albert_layer_groups")(x_BxLxD, mask_Bx1xLxL, deterministic)


class AlbertTrunk(nn.Module):
    """Embeddings, encoder and (optionally) the pooler (one linear + tanh): HF's ``AlbertModel``."""

    config: AlbertConfig
    add_pooler: bool = True

    def setup(self):
        c = self.config
        self.embeddings = BertEmbeddings(c, features=c.embedding_size)
        self.encoder = AlbertTransformer(c)
        if self.add_pooler:
            self.pooler = dense(c, c.hidden_size, ("embed", "mlp"), "pooler")

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, cls_positions=None):
        """Returns ``(last_hidden_state [B, L, D], pooler_output [B, D] or None)``; the pooler
        output is ``[B, P, D]`` at ``cls_positions [B, P]`` when they are given (packed rows)."""
        check_length(self.config, input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x_BxLxE = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        x_BxLxD = self.encoder(x_BxLxE, as_attention_mask(attention_mask), deterministic)
        first_BxD = first_token(x_BxLxD, cls_positions)
        pooled_BxD = jnp.tanh(self.pooler(first_BxD)) if self.add_pooler else None
        return x_BxLxD, pooled_BxD


class AlbertModel(nn.Module):
    """The bare trunk: HF's ``AlbertModel``."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        hidden, pooled = AlbertTrunk(self.config, name="albert")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        return {"last_hidden_state": hidden, "pooler_output": pooled}


class AlbertMLMHead(nn.Module):
    """dense D -> E, activation, LayerNorm, decoder tied to the word embeddings, + ``bias``."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, hidden_BxPxD, word_embeddings_VxE):
        c = self.config
        h_BxPxE = dense(c, c.embedding_size, ("embed", None), "dense")(hidden_BxPxD)
        h_BxPxE = layer_norm(c)(ACTIVATIONS[c.hidden_act](h_BxPxE))
        return tied_decoder(self, c, h_BxPxE, word_embeddings_VxE)


class AlbertSOPHead(nn.Module):
    """dropout -> ``classifier`` on the pooled output (HF sizes it by ``num_labels``)."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, pooled_BxD, deterministic):
        c = self.config
        pooled_BxD = Dropout(c.classifier_dropout_rate)(pooled_BxD, deterministic=deterministic)
        return dense(c, c.num_labels, ("embed", None), "classifier")(pooled_BxD)


class AlbertForPreTraining(nn.Module):
    """Masked-LM head and sentence-order-prediction head: HF's ``AlbertForPreTraining``."""

    config: AlbertConfig

    def setup(self):
        self.albert = AlbertTrunk(self.config)
        self.predictions = AlbertMLMHead(self.config)
        self.sop_classifier = AlbertSOPHead(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, masked_positions=None):
        hidden_BxLxD, pooled_BxD = self.albert(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        hidden_BxPxD = gather_positions(hidden_BxLxD, masked_positions)
        word_embeddings_VxE = self.albert.embeddings.word_embeddings.embedding
        return {
            "mlm_logits": self.predictions(hidden_BxPxD, word_embeddings_VxE),
            "sop_logits": self.sop_classifier(pooled_BxD, deterministic),
        }


class AlbertForSequenceClassification(nn.Module):
    """pooler -> dropout (``classifier_dropout``) -> ``classifier``; one label means regression.
    With ``cls_positions [B, P]`` (packed rows) ``logits`` are ``[B, P, num_labels]``."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, cls_positions=None):
        c = self.config
        _, pooled_BxD = AlbertTrunk(c, name="albert")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids, cls_positions
        )
        pooled_BxD = Dropout(c.classifier_dropout_rate)(pooled_BxD, deterministic=deterministic)
        return {"logits": dense(c, c.num_labels, ("embed", None), "classifier")(pooled_BxD)}


class AlbertForMultipleChoice(nn.Module):
    """Every choice through the trunk: pooler -> dropout (``classifier_dropout``) ->
    ``classifier`` (hidden -> 1); logits ``[B, C]`` (HF's ``AlbertForMultipleChoice``)."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        c = self.config
        num_choices, rows = flatten_choices(input_ids, attention_mask, token_type_ids, position_ids)
        ids, mask, types, positions = rows
        _, pooled_NxD = AlbertTrunk(c, name="albert")(ids, mask, types, deterministic, positions)
        pooled_NxD = Dropout(c.classifier_dropout_rate)(pooled_NxD, deterministic=deterministic)
        scores_Nx1 = dense(c, 1, ("embed", None), "classifier")(pooled_NxD)
        return {"logits": scores_Nx1.reshape(-1, num_choices)}


def layer_depth(path: tuple[str, ...], num_layers: int) -> int:
    """0 for the embeddings and ``embedding_hidden_mapping_in``, g+1 for layer group g (a shared
    group has one depth however many layers run it), num_layers+1 for pooler and heads."""
    if path[1:2] == ("embeddings",) or path[1:3] == ("encoder", "embedding_hidden_mapping_in"):
        return 0
    if path[1:3] == ("encoder", "albert_layer_groups"):
        return int(path[3]) + 1
    return num_layers + 1


def _size(layers: int, hidden: int, heads: int) -> dict:
    return dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                intermediate_size=4 * hidden, embedding_size=128)


# Published ALBERT sizes (Lan et al. 2019, Table 1; one shared group, E = 128).
PRESETS = {
    "base": _size(12, 768, 12),
    "large": _size(24, 1024, 16),
    "xlarge": _size(24, 2048, 16),
    "xxlarge": _size(12, 4096, 64),
}

SPEC = register(FamilySpec(
    name="albert",
    model_types=("albert",),
    config_cls=AlbertConfig,
    trunk="albert",
    models={
        None: (AlbertModel, "AlbertModel"),
        "pretraining": (AlbertForPreTraining, "AlbertForPreTraining"),
        "classification": (AlbertForSequenceClassification, "AlbertForSequenceClassification"),
        "multiple_choice": (AlbertForMultipleChoice, "AlbertForMultipleChoice"),
    },
    head_prefixes=("predictions.", "sop_classifier.", "classifier."),
    layer_depth=layer_depth,
    optional_prefixes=("albert.pooler.",),  # AlbertForMaskedLM checkpoints have no pooler
    ignored=(
        "albert.embeddings.position_ids",  # buffers in older checkpoints
        "albert.embeddings.token_type_ids",
        "predictions.decoder.weight",  # tied to the word embeddings
        "predictions.decoder.bias",  # tied to predictions.bias
    ),
    presets=PRESETS,
    pretraining_outputs=("mlm_logits", "sop_logits"),
    trunk_module=lambda config, name: AlbertTrunk(config, add_pooler=False, name=name),
    hf_prefix="Albert",
))
