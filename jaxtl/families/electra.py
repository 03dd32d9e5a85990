"""ELECTRA: the trunk and its heads as Flax linen modules with Hugging Face parameter names.

ELECTRA's trunk is BERT's encoder behind smaller embeddings: word, position and token-type
embeddings of width ``embedding_size`` (E), LayerNorm and dropout, then ``embeddings_project``
(E -> hidden D) when E != D (absent otherwise), then BERT's layers; there is no pooler. The
parameter tree mirrors Hugging Face's ``ElectraFor...`` classes (``electra/embeddings/...``,
``electra/embeddings_project``, ``electra/encoder/layer/{i}/...``, ``discriminator_predictions``,
``classifier/dense``, ``classifier/out_proj``). Models return a dict of named arrays:

* :class:`ElectraModel` -> ``last_hidden_state [B, L, D]``
* :class:`ElectraForPreTraining` (the discriminator) -> ``logits [B, L]``: per token, the score
  that the token was replaced (by the generator); train it with
  :func:`jaxtl.steps.replaced_token_detection_loss`
* :class:`ElectraForSequenceClassification` -> ``logits [B, num_labels]``
* :class:`ElectraForMultipleChoice` -> ``logits [B, C]`` (one score per choice; inputs
  ``[B, C, L]``): HF's ``sequence_summary`` (first token -> ``summary`` dense -> activation ->
  dropout, per the ``summary_*`` config fields) -> ``classifier`` (hidden -> 1)

Hub ELECTRA checkpoints are mostly discriminators saved as ``ElectraForPreTraining``; loaded for
classification, their ``discriminator_predictions`` weights are dropped (named) and the
``classifier`` is new (named). Generator checkpoints (``ElectraForMaskedLM``) load the same way.

Call them as ``model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
deterministic=True)``; optional ``position_ids [B, L]`` (default ``0..L-1``) and an
``attention_mask`` of ``[B, L, L]`` express packed rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxtl.errors import ConfigError
from jaxtl.families import FamilySpec, register
from jaxtl.families.bert import UNSUPPORTED_HF_FIELDS, BertEmbeddings, BertEncoder, first_token
from jaxtl.families.layers import (
    ACTIVATIONS, Dropout, as_attention_mask, check_common, check_length, config_from_hf, config_to_hf,
    constrain, dense, flatten_choices,
)

# How HF's ElectraSequenceSummary (the multiple-choice head) may summarise a sequence and which
# activation it may apply (transformers' get_activation names; None or "": none).
SUMMARY_TYPES = ("first", "last", "mean", "cls_index")
SUMMARY_ACTIVATIONS = {**ACTIVATIONS, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
                       "linear": lambda x: x}


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
    """Architecture of an ELECTRA model; field names and defaults are Hugging Face's
    ``ElectraConfig`` ones (the defaults are ELECTRA-small's discriminator)."""

    vocab_size: int = 30522
    embedding_size: int = 128  # width of the embeddings; projected to hidden_size when different
    hidden_size: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob, as HF does
    # Classification labels, in id order; one label means regression (a tuple: hashable).
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")
    problem_type: str | None = None  # HF's field: "regression" / "single_label_classification"
    # The multiple-choice head's sequence summary (HF ElectraSequenceSummary): which hidden state
    # (first, last, mean; cls_index without indices is the last), a hidden -> hidden dense or not,
    # its activation (None: none), dropout before and after.
    summary_type: str = "first"
    summary_use_proj: bool = True
    summary_activation: str | None = "gelu"
    summary_first_dropout: float = 0.0
    summary_last_dropout: float = 0.1
    # jaxtl-only fields: not architecture, but how the model computes.
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of the parameters
    remat: bool = False  # recompute each encoder layer in the backward pass (saves memory)

    def __post_init__(self):
        check_common(self)
        if self.summary_type not in SUMMARY_TYPES:
            raise ConfigError(f"summary_type={self.summary_type!r} is not supported; use one of "
                              f"{', '.join(SUMMARY_TYPES)}")
        if self.summary_activation and self.summary_activation not in SUMMARY_ACTIVATIONS:
            raise ConfigError(f"summary_activation={self.summary_activation!r} is not supported; "
                              f"use one of {sorted(SUMMARY_ACTIVATIONS)} or null")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes) -> "ElectraConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "ElectraConfig":
        """Build from a Hugging Face ``config.json`` dict; refuses what jaxtl cannot compute
        (the same fields as BERT: relative positions, decoder use, cross-attention, chunking)."""
        return config_from_hf(cls, hf, source, UNSUPPORTED_HF_FIELDS, **overrides)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` fields for this architecture."""
        return config_to_hf(self, "electra")



class ElectraTrunk(nn.Module):
    """Embeddings, the E -> D projection (when E != D) and BERT's encoder: HF's ``ElectraModel``."""

    config: ElectraConfig

    def setup(self):
        c = self.config
        self.embeddings = BertEmbeddings(c, features=c.embedding_size)
        if c.embedding_size != c.hidden_size:
            self.embeddings_project = dense(c, c.hidden_size, ("embed", "mlp"), "embeddings_project")
        self.encoder = BertEncoder(c)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        """Returns ``last_hidden_state [B, L, D]``."""
        c = self.config
        check_length(c, input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x_BxLxE = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        x_BxLxD = x_BxLxE
        if c.embedding_size != c.hidden_size:
            x_BxLxD = constrain(self.embeddings_project(x_BxLxE), ("batch", "length", "embed"))
        return self.encoder(x_BxLxD, as_attention_mask(attention_mask), deterministic)


class ElectraModel(nn.Module):
    """The bare trunk: HF's ``ElectraModel`` (no pooler)."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        hidden_BxLxD = ElectraTrunk(self.config, name="electra")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        return {"last_hidden_state": hidden_BxLxD}


class ElectraDiscriminatorPredictions(nn.Module):
    """dense -> hidden_act -> dense_prediction: one replaced-token score per position."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, hidden_BxLxD):
        c = self.config
        h_BxLxD = dense(c, c.hidden_size, ("embed", "mlp"), "dense")(hidden_BxLxD)
        h_BxLxD = ACTIVATIONS[c.hidden_act](h_BxLxD)
        logits_BxLx1 = dense(c, 1, ("mlp", None), "dense_prediction")(h_BxLxD)
        return logits_BxLx1[..., 0]


class ElectraForPreTraining(nn.Module):
    """The discriminator: HF's ``ElectraForPreTraining`` (replaced-token detection)."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        c = self.config
        hidden_BxLxD = ElectraTrunk(c, name="electra")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        logits_BxL = ElectraDiscriminatorPredictions(c, name="discriminator_predictions")(hidden_BxLxD)
        return {"logits": logits_BxL}


class ElectraClassificationHead(nn.Module):
    """On the first token: dropout -> dense -> GELU -> dropout -> out_proj (HF's
    ``ElectraClassificationHead``)."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, hidden_BxLxD, deterministic, cls_positions_BxP=None):
        c = self.config
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        x_BxD = Dropout(rate)(first_token(hidden_BxLxD, cls_positions_BxP), deterministic=deterministic)
        x_BxD = dense(c, c.hidden_size, ("embed", "mlp"), "dense")(x_BxD)
        # Exact GELU whatever hidden_act is: HF hard-codes get_activation("gelu") here.
        x_BxD = ACTIVATIONS["gelu"](x_BxD)
        x_BxD = Dropout(rate)(x_BxD, deterministic=deterministic)
        return dense(c, c.num_labels, ("mlp", None), "out_proj")(x_BxD)


class ElectraForSequenceClassification(nn.Module):
    """HF's ``ElectraForSequenceClassification``; one label means regression. With
    ``cls_positions [B, P]`` (packed rows) ``logits`` are ``[B, P, num_labels]``."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, cls_positions=None):
        c = self.config
        hidden_BxLxD = ElectraTrunk(c, name="electra")(
            input_ids, attention_mask, token_type_ids, deterministic, position_ids
        )
        logits = ElectraClassificationHead(c, name="classifier")(hidden_BxLxD, deterministic,
                                                                 cls_positions)
        return {"logits": logits}


class ElectraSequenceSummary(nn.Module):
    """HF's ``ElectraSequenceSummary``: one vector per row ``[N, D]`` from ``[N, L, D]`` ->
    dropout (``summary_first_dropout``) -> ``summary`` dense (``summary_use_proj``) ->
    ``summary_activation`` -> dropout (``summary_last_dropout``)."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, hidden_NxLxD, deterministic):
        c = self.config
        if c.summary_type == "first":
            x_NxD = hidden_NxLxD[:, 0]
        elif c.summary_type == "mean":  # over every position, padding included, as HF
            x_NxD = hidden_NxLxD.mean(axis=1)
        else:  # "last", and "cls_index" without indices (HF then takes the last position)
            x_NxD = hidden_NxLxD[:, -1]
        x_NxD = Dropout(c.summary_first_dropout)(x_NxD, deterministic=deterministic)
        if c.summary_use_proj:
            x_NxD = dense(c, c.hidden_size, ("embed", "mlp"), "summary")(x_NxD)
        if c.summary_activation:
            x_NxD = SUMMARY_ACTIVATIONS[c.summary_activation](x_NxD)
        return Dropout(c.summary_last_dropout)(x_NxD, deterministic=deterministic)


class ElectraForMultipleChoice(nn.Module):
    """Every choice through the trunk -> ``sequence_summary`` -> ``classifier`` (hidden -> 1);
    logits ``[B, C]`` (HF's ``ElectraForMultipleChoice``; ``classifier_dropout`` is not used)."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        c = self.config
        num_choices, rows = flatten_choices(input_ids, attention_mask, token_type_ids, position_ids)
        ids, mask, types, positions = rows
        hidden_NxLxD = ElectraTrunk(c, name="electra")(ids, mask, types, deterministic, positions)
        summary_NxD = ElectraSequenceSummary(c, name="sequence_summary")(hidden_NxLxD, deterministic)
        axes = ("mlp", None) if c.summary_use_proj else ("embed", None)
        scores_Nx1 = dense(c, 1, axes, "classifier")(summary_NxD)
        return {"logits": scores_Nx1.reshape(-1, num_choices)}


def layer_depth(path: tuple[str, ...], num_layers: int) -> int:
    """0 for the embeddings and their projection, i+1 for encoder layer i, num_layers+1 for heads."""
    if path[1:2] in (("embeddings",), ("embeddings_project",)):
        return 0
    if path[1:3] == ("encoder", "layer"):
        return int(path[3]) + 1
    return num_layers + 1


# Published discriminator sizes (Clark et al. 2020; google/electra-{small,base,large}-discriminator).
PRESETS = {
    "small": dict(num_hidden_layers=12, hidden_size=256, num_attention_heads=4,
                  intermediate_size=1024, embedding_size=128),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                 intermediate_size=3072, embedding_size=768),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                  intermediate_size=4096, embedding_size=1024),
}

SPEC = register(FamilySpec(
    name="electra",
    model_types=("electra",),
    config_cls=ElectraConfig,
    trunk="electra",
    models={
        None: (ElectraModel, "ElectraModel"),
        "pretraining": (ElectraForPreTraining, "ElectraForPreTraining"),
        "classification": (ElectraForSequenceClassification, "ElectraForSequenceClassification"),
        "multiple_choice": (ElectraForMultipleChoice, "ElectraForMultipleChoice"),
    },
    head_prefixes=(
        "discriminator_predictions.",
        "classifier.",
        "sequence_summary.",  # ElectraForMultipleChoice
        # ElectraForMaskedLM (generator checkpoints): dropped, named, when loaded here.
        "generator_predictions.",
        "generator_lm_head.",
    ),
    layer_depth=layer_depth,
    ignored=(
        "electra.embeddings.position_ids",  # buffers, in older checkpoints
        "electra.embeddings.token_type_ids",
    ),
    presets=PRESETS,
    # Replaced-token detection, not masked LM: `jaxtl pretrain` refuses it (no generator data).
    pretraining_outputs=("logits",),
    trunk_module=lambda config, name: ElectraTrunk(config, name=name),
    hf_prefix="Electra",
))
