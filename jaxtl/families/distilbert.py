"""DistilBERT: the trunk and its heads as Flax linen modules with Hugging Face parameter names.

The parameter tree mirrors Hugging Face's ``DistilBert...`` classes (``distilbert/embeddings/
word_embeddings``, ``distilbert/transformer/layer/{i}/attention/q_lin``, ``sa_layer_norm``,
``ffn/lin1``, ``output_layer_norm``; heads ``vocab_transform``/``vocab_layer_norm``/
``vocab_projector`` and ``pre_classifier``/``classifier``). DistilBERT has no token types (the
``token_type_ids`` argument is accepted and ignored), no pooler and no next-sentence head.
Models return a dict of named arrays:

* :class:`DistilBertModel` -> ``last_hidden_state [B, L, D]``
* :class:`DistilBertForMaskedLM` -> ``mlm_logits [B, L, V]`` (``[B, P, V]`` when
  ``masked_positions [B, P]`` is given); pretrain it with ``data.nsp: false``
* :class:`DistilBertForSequenceClassification` -> ``logits [B, num_labels]``
* :class:`DistilBertForMultipleChoice` -> ``logits [B, C]`` (one score per choice; inputs
  ``[B, C, L]``)

Config: Hugging Face names the fields differently (``dim``, ``n_layers``, ``n_heads``,
``hidden_dim``, ``dropout``, ``attention_dropout``, ``activation``, ``seq_classif_dropout``);
:class:`DistilBertConfig` uses jaxtl's standard names (the recipes, optimizer and sharding read
them) and :data:`HF_RENAMES` translates both ways.

Sinusoidal positions (``sinusoidal_pos_embds: true``): checkpoints store the table as
``distilbert.embeddings.position_embeddings.weight``, and it is loaded from there like a learned
table. A from-scratch model initialises it with the same sinusoid as Hugging Face
(:func:`sinusoidal_table`). It is a trainable parameter, as in transformers 5 (whose
``DistilBertForMaskedLM`` computes a gradient for it and whose optimizers update it); the
original DistilBERT/XLM code and transformers 4 kept it fixed: to do that, freeze it with
``optim.freeze: [distilbert/embeddings/position_embeddings]`` (zero updates, no weight decay).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import jax.numpy as jnp
import flax.linen as nn

from jaxtl.errors import ConfigError
from jaxtl.families import FamilySpec, register
from jaxtl.families.bert import BertLayerCollection, first_token, gather_positions, tied_decoder
from jaxtl.families.layers import (
    ACTIVATIONS, Dropout, as_attention_mask, attend, check_common, check_length, config_from_hf, config_to_hf,
    constrain, dense, embed, flatten_choices, init_normal, layer_norm, lookup, partitioned,
)

# Hugging Face DistilBertConfig field -> jaxtl's standard field name.
HF_RENAMES = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "activation": "hidden_act",
    "seq_classif_dropout": "classifier_dropout",
}
# Hugging Face config fields jaxtl does not implement; anything but the listed value is refused.
UNSUPPORTED_HF_FIELDS = {
    # An untied vocab_projector.weight: jaxtl's MLM decoder is always the word embeddings.
    "tie_word_embeddings": (True, None),
}
# HF's DistilBERT hard-codes every LayerNorm epsilon to 1e-12 and ignores a config.json
# layer_norm_eps; so does jaxtl (and refuses another value, which HF would not compute).
LAYER_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
    """Architecture of a DistilBERT model, in jaxtl's standard field names (HF's in comments)."""

    vocab_size: int = 30522
    hidden_size: int = 768  # HF: dim
    num_hidden_layers: int = 6  # HF: n_layers
    num_attention_heads: int = 12  # HF: n_heads
    intermediate_size: int = 3072  # HF: hidden_dim
    hidden_act: str = "gelu"  # HF: activation (also the MLM head's activation)
    hidden_dropout_prob: float = 0.1  # HF: dropout
    attention_probs_dropout_prob: float = 0.1  # HF: attention_dropout
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False  # initialise the position table with sinusoids
    initializer_range: float = 0.02
    layer_norm_eps: float = LAYER_NORM_EPS  # fixed by HF's DistilBERT; not written to config.json
    pad_token_id: int = 0
    # HF: seq_classif_dropout, after pre_classifier + ReLU. None: use hidden_dropout_prob.
    classifier_dropout: float | None = 0.2
    qa_dropout: float = 0.1  # HF's question-answering head dropout; kept for export
    # Classification labels, in id order; one label means regression.
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")
    problem_type: str | None = None  # HF's field: "regression" / "single_label_classification"
    # jaxtl-only fields: not architecture, but how the model computes.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        check_common(self)
        if self.layer_norm_eps != LAYER_NORM_EPS:
            raise ConfigError(
                f"layer_norm_eps={self.layer_norm_eps!r}: DistilBERT's LayerNorm epsilon is fixed at "
                f"{LAYER_NORM_EPS} (Hugging Face ignores the field), so an exported model would "
                "compute something else"
            )

    @property
    def token_dropout(self) -> float:
        """DistilBertForTokenClassification drops out with ``dropout``, not seq_classif_dropout."""
        return self.hidden_dropout_prob

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes) -> "DistilBertConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json",
                **overrides) -> "DistilBertConfig":
        """Build from a Hugging Face ``config.json`` dict; refuses what jaxtl cannot compute."""
        activation = hf.get("activation", "gelu")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"{source}: activation={activation!r} is not supported by jaxtl; "
                              f"use one of {sorted(ACTIVATIONS)}")
        hf = {k: v for k, v in hf.items() if k != "layer_norm_eps"}  # HF ignores it too
        return config_from_hf(cls, hf, source, UNSUPPORTED_HF_FIELDS, HF_RENAMES, **overrides)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` fields (HF's names: ``dim``, ``n_layers``, ...)."""
        hf = config_to_hf(self, "distilbert", HF_RENAMES, tie_word_embeddings=True)
        hf.pop("layer_norm_eps")
        if hf["seq_classif_dropout"] is None:
            hf["seq_classif_dropout"] = self.hidden_dropout_prob
        return hf


def sinusoidal_table(num_positions: int, dim: int) -> np.ndarray:
    """``[num_positions, dim]``: sin on even, cos on odd columns of ``pos / 10000^(2(j//2)/dim)``,
    Hugging Face's ``create_sinusoidal_embeddings`` (computed in float64, as HF's numpy code)."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angles = pos / np.power(10000.0, 2 * (j // 2) / dim)
    return np.where(j % 2 == 0, np.sin(angles), np.cos(angles)).astype(np.float32)


def _sinusoidal_init(key, shape, dtype=jnp.float32):
    del key  # deterministic
    return jnp.asarray(sinusoidal_table(*shape), dtype)


class DistilBertEmbeddings(nn.Module):
    """word + position embeddings -> LayerNorm -> dropout (no token types)."""

    config: DistilBertConfig

    def setup(self):
        c = self.config
        self.word_embeddings = embed(c, c.vocab_size, c.hidden_size, ("vocab", "embed"))
        position_init = _sinusoidal_init if c.sinusoidal_pos_embds else init_normal(c)
        self.position_embeddings = nn.Embed(
            c.max_position_embeddings, c.hidden_size,
            dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
            embedding_init=partitioned(position_init, (None, "embed")),
        )
        self.LayerNorm = layer_norm(c)
        self.dropout = Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids_BxL, position_ids_BxL, deterministic):
        L = input_ids_BxL.shape[1]
        if position_ids_BxL is None:
            # HF's default 0..L-1, as a slice (shards cleanly), not a gather.
            positions = self.position_embeddings.embedding[None, :L].astype(self.config.dtype)
        else:
            positions = self.position_embeddings(position_ids_BxL)
        words = lookup(self.word_embeddings, input_ids_BxL, self.config.pad_token_id)
        x_BxLxD = self.LayerNorm(words + positions)
        x_BxLxD = self.dropout(x_BxLxD, deterministic=deterministic)
        return constrain(x_BxLxD, ("batch", "length", "embed"))


class DistilBertSelfAttention(nn.Module):
    """q_lin/k_lin/v_lin -> attention -> out_lin (no dropout after out_lin, as HF)."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        c = self.config
        B, L, _ = x_BxLxD.shape
        H, K = c.num_attention_heads, c.head_dim

        def heads(name):
            y = dense(c, c.hidden_size, ("embed", "heads"), name)(x_BxLxD)
            return constrain(y.reshape(B, L, H, K), ("batch", "length", "heads", "kv"))

        out_BxLxHxK = attend(
            heads("q_lin"), heads("k_lin"), heads("v_lin"), mask_Bx1xLxL,
            dropout_rate=c.attention_probs_dropout_prob, deterministic=deterministic,
            dropout_module=Dropout(c.attention_probs_dropout_prob),
        )
        return dense(c, c.hidden_size, ("heads", "embed"), "out_lin")(out_BxLxHxK.reshape(B, L, H * K))


class DistilBertFFN(nn.Module):
    """lin1 -> activation -> lin2 -> dropout."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, x_BxLxD, deterministic):
        c = self.config
        h_BxLxF = ACTIVATIONS[c.hidden_act](dense(c, c.intermediate_size, ("embed", "mlp"), "lin1")(x_BxLxD))
        h_BxLxF = constrain(h_BxLxF, ("batch", "length", "mlp"))
        h_BxLxD = dense(c, c.hidden_size, ("mlp", "embed"), "lin2")(h_BxLxF)
        return Dropout(c.hidden_dropout_prob)(h_BxLxD, deterministic=deterministic)


class DistilBertTransformerBlock(nn.Module):
    """Post-LN block: ``sa_layer_norm(x + attention(x))``, then ``output_layer_norm(a + ffn(a))``."""

    config: DistilBertConfig

    def setup(self):
        c = self.config
        self.attention = DistilBertSelfAttention(c)
        self.sa_layer_norm = layer_norm(c, "sa_layer_norm")
        self.ffn = DistilBertFFN(c)
        self.output_layer_norm = layer_norm(c, "output_layer_norm")

    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        a_BxLxD = self.sa_layer_norm(self.attention(x_BxLxD, mask_Bx1xLxL, deterministic) + x_BxLxD)
        a_BxLxD = constrain(a_BxLxD, ("batch", "length", "embed"))
        out_BxLxD = self.output_layer_norm(self.ffn(a_BxLxD, deterministic) + a_BxLxD)
        return constrain(out_BxLxD, ("batch", "length", "embed"))


class DistilBertTransformer(nn.Module):
    """The blocks, named ``0``, ``1``, ... under ``transformer/layer`` as in Hugging Face."""

    config: DistilBertConfig

    def setup(self):
        self.layer = BertLayerCollection(self.config, layer_cls=DistilBertTransformerBlock)

    def __call__(self, x_BxLxD, mask_Bx1xLxL, deterministic):
        return self.layer(x_BxLxD, mask_Bx1xLxL, deterministic)


class DistilBertTrunk(nn.Module):
    """Embeddings and transformer: HF's ``DistilBertModel``."""

    config: DistilBertConfig

    def setup(self):
        self.embeddings = DistilBertEmbeddings(self.config)
        self.transformer = DistilBertTransformer(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        """Returns ``last_hidden_state [B, L, D]``; ``token_type_ids`` is ignored."""
        del token_type_ids  # DistilBERT has no segment embeddings
        check_length(self.config, input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x_BxLxD = self.embeddings(input_ids, position_ids, deterministic)
        return self.transformer(x_BxLxD, as_attention_mask(attention_mask), deterministic)


class DistilBertModel(nn.Module):
    """The bare trunk: HF's ``DistilBertModel`` (no pooler)."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        hidden_BxLxD = DistilBertTrunk(self.config, name="distilbert")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        return {"last_hidden_state": hidden_BxLxD}


class DistilBertVocabProjector(nn.Module):
    """HF's ``vocab_projector``: its weight is the word embeddings (tied), its ``bias`` its own."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, h_BxPxD, word_embeddings_VxD):
        return tied_decoder(self, self.config, h_BxPxD, word_embeddings_VxD)


class DistilBertForMaskedLM(nn.Module):
    """vocab_transform -> activation -> vocab_layer_norm -> vocab_projector (tied): MLM only."""

    config: DistilBertConfig

    def setup(self):
        c = self.config
        self.distilbert = DistilBertTrunk(c)
        self.vocab_transform = dense(c, c.hidden_size, ("embed", "mlp"), "vocab_transform")
        self.vocab_layer_norm = layer_norm(c, "vocab_layer_norm")
        self.vocab_projector = DistilBertVocabProjector(c)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, masked_positions=None):
        hidden_BxLxD = self.distilbert(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        h_BxPxD = gather_positions(hidden_BxLxD, masked_positions)
        h_BxPxD = ACTIVATIONS[self.config.hidden_act](self.vocab_transform(h_BxPxD))
        h_BxPxD = self.vocab_layer_norm(h_BxPxD)
        word_embeddings_VxD = self.distilbert.embeddings.word_embeddings.embedding
        return {"mlm_logits": self.vocab_projector(h_BxPxD, word_embeddings_VxD)}


class DistilBertForSequenceClassification(nn.Module):
    """First token -> pre_classifier -> ReLU -> dropout(classifier_dropout) -> classifier;
    one label means regression. With ``cls_positions [B, P]`` (packed rows) every example's
    first token -> ``logits [B, P, num_labels]``."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, cls_positions=None):
        c = self.config
        hidden_BxLxD = DistilBertTrunk(c, name="distilbert")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        first_BxD = dense(c, c.hidden_size, ("embed", "mlp"), "pre_classifier")(
            first_token(hidden_BxLxD, cls_positions))
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        first_BxD = Dropout(rate)(nn.relu(first_BxD), deterministic=deterministic)
        logits = dense(c, c.num_labels, ("mlp", None), "classifier")(first_BxD)
        return {"logits": logits}


class DistilBertForMultipleChoice(nn.Module):
    """Every choice through the trunk: first token -> pre_classifier -> ReLU -> dropout
    (``seq_classif_dropout``, jaxtl ``classifier_dropout``) -> ``classifier`` (hidden -> 1);
    logits ``[B, C]`` (HF's ``DistilBertForMultipleChoice``)."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        c = self.config
        num_choices, rows = flatten_choices(input_ids, attention_mask, token_type_ids, position_ids)
        ids, mask, types, positions = rows
        hidden_NxLxD = DistilBertTrunk(c, name="distilbert")(ids, mask, types, deterministic, positions)
        first_NxD = dense(c, c.hidden_size, ("embed", "mlp"), "pre_classifier")(hidden_NxLxD[:, 0])
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        first_NxD = Dropout(rate)(nn.relu(first_NxD), deterministic=deterministic)
        scores_Nx1 = dense(c, 1, ("mlp", None), "classifier")(first_NxD)
        return {"logits": scores_Nx1.reshape(-1, num_choices)}


def layer_depth(path: tuple[str, ...], num_layers: int) -> int:
    """0 for embeddings, i+1 for transformer layer i, num_layers+1 for the heads."""
    if path[1:2] == ("embeddings",):
        return 0
    if path[1:3] == ("transformer", "layer"):
        return int(path[3]) + 1
    return num_layers + 1


# The published size (Sanh et al. 2019: distilbert-base-uncased/-cased/-multilingual-cased).
PRESETS = {
    "base": dict(num_hidden_layers=6, hidden_size=768, num_attention_heads=12,
                 intermediate_size=3072),
}

SPEC = register(FamilySpec(
    name="distilbert",
    model_types=("distilbert",),
    config_cls=DistilBertConfig,
    trunk="distilbert",
    models={
        None: (DistilBertModel, "DistilBertModel"),
        "pretraining": (DistilBertForMaskedLM, "DistilBertForMaskedLM"),
        "classification": (DistilBertForSequenceClassification, "DistilBertForSequenceClassification"),
        "multiple_choice": (DistilBertForMultipleChoice, "DistilBertForMultipleChoice"),
    },
    head_prefixes=("vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "pre_classifier.",
                   "classifier."),
    layer_depth=layer_depth,
    ignored=(
        "distilbert.embeddings.position_ids",  # a buffer in older checkpoints
        "vocab_projector.weight",  # tied to the word embeddings (in pytorch_model.bin state dicts)
    ),
    presets=PRESETS,
    pretraining_outputs=("mlm_logits",),
    trunk_module=lambda config, name: DistilBertTrunk(config, name=name),
    hf_prefix="DistilBert",
))
