"""RoBERTa (also XLM-RoBERTa and CamemBERT, the same architecture): the trunk and its heads as
Flax linen modules with Hugging Face parameter names.

The encoder layers are BERT's, math and names alike (:mod:`jaxtl.families.bert`); RoBERTa differs
in three places:

* positions are counted from ``pad_token_id + 1`` over the non-padding tokens, and padding tokens
  sit at position ``pad_token_id`` (fairseq's rule, HF's ``create_position_ids_from_input_ids``),
  so ``max_position_embeddings`` is 514 for 512 tokens;
* no next-sentence head: pretraining is masked LM only (HF ``RobertaForMaskedLM``, ``lm_head``:
  dense -> exact GELU -> ``layer_norm`` -> decoder tied to the word embeddings + ``bias``);
* the classification head reads the ``<s>`` token's hidden state itself (``classifier.dense`` ->
  tanh -> ``classifier.out_proj``, dropout before each) and the trunk of the head models has no
  pooler (HF builds them with ``add_pooling_layer=False``); only the bare ``RobertaModel`` and
  the multiple-choice head have one.

Models return a dict of named arrays:

* :class:`RobertaModel` -> ``last_hidden_state [B, L, D]``, ``pooler_output [B, D]``
* :class:`RobertaForMaskedLM` -> ``mlm_logits [B, L, V]`` (``[B, P, V]`` when
  ``masked_positions [B, P]`` is given)
* :class:`RobertaForSequenceClassification` -> ``logits [B, num_labels]``
* :class:`RobertaForMultipleChoice` -> ``logits [B, C]`` (one score per choice; inputs
  ``[B, C, L]``): unlike the classification head, HF's multiple-choice head reads the trunk's
  pooler (``roberta.pooler``), then dropout (``hidden_dropout_prob``) and a ``classifier`` linear

Call them as BERT's: ``model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
deterministic=True)``; ``position_ids [B, L]`` replaces the padding-aware rule above.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from jaxtl.errors import ConfigError
from jaxtl.families import FamilySpec, register
from jaxtl.families.bert import BertTrunk, first_token, gather_positions, layer_depth, tied_decoder
from jaxtl.families.layers import (
    ACTIVATIONS, Dropout, check_common, config_from_hf, config_to_hf, dense, flatten_choices, layer_norm,
)

MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")

# Hugging Face config fields jaxtl does not implement (see bert.UNSUPPORTED_HF_FIELDS). An untied
# LM decoder is refused too: jaxtl's decoder is the word embeddings, and the checkpoint's own
# decoder weight would be dropped as a tied copy.
UNSUPPORTED_HF_FIELDS = {
    "position_embedding_type": ("absolute", None),
    "is_decoder": (False, None),
    "add_cross_attention": (False, None),
    "chunk_size_feed_forward": (0, None),
    "tie_word_embeddings": (True, None),
}


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
    """Architecture of a RoBERTa model; the field names are Hugging Face's ``RobertaConfig`` ones
    (defaults: roberta-base)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514  # pad_token_id + 1 + the longest sequence (512)
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1  # also the position of padding tokens; real tokens start after it
    bos_token_id: int = 0  # <s>; only written back to config.json
    eos_token_id: int = 2  # </s>; only written back to config.json
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob, as HF does
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")  # in id order; one label means regression
    problem_type: str | None = None
    model_type: str = "roberta"  # "roberta", "xlm-roberta" or "camembert": export writes it back
    # jaxtl-only fields: not architecture, but how the model computes.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        check_common(self)
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type={self.model_type!r} is not a RoBERTa model type; use one "
                              f"of {', '.join(MODEL_TYPES)}")
        if self.max_position_embeddings <= self.pad_token_id + 1:
            raise ConfigError(
                f"max_position_embeddings={self.max_position_embeddings} leaves no position for "
                f"tokens: RoBERTa positions start at pad_token_id + 1 = {self.pad_token_id + 1}"
            )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def positions_padding_idx(self) -> int:
        """HF's position table has ``padding_idx=pad_token_id`` (the padding tokens' position)."""
        return self.pad_token_id

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table holds (512 for 514 positions)."""
        return self.max_position_embeddings - self.pad_token_id - 1

    def replace(self, **changes) -> "RobertaConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "RobertaConfig":
        """Build from a Hugging Face ``config.json`` dict; refuses what jaxtl cannot compute."""
        return config_from_hf(cls, hf, source, UNSUPPORTED_HF_FIELDS, **overrides)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` fields for this architecture (its own model_type)."""
        return config_to_hf(self, self.model_type, tie_word_embeddings=True)


def position_ids_from_input_ids(input_ids_BxL, padding_idx: int):
    """RoBERTa's positions ``[B, L]``: ``padding_idx + 1, + 2, ...`` over the non-padding tokens
    (counted, so a padding token inside a row does not take a position), ``padding_idx`` at
    padding tokens."""
    not_pad_BxL = (input_ids_BxL != padding_idx).astype(jnp.int32)
    return jnp.cumsum(not_pad_BxL, axis=1) * not_pad_BxL + padding_idx


def check_tokens_fit(config: RobertaConfig, input_ids) -> None:
    L = input_ids.shape[-1]
    if L > config.max_tokens:
        raise ConfigError(
            f"sequence length {L} exceeds the {config.max_tokens} tokens a RoBERTa model with "
            f"max_position_embeddings={config.max_position_embeddings} and pad_token_id="
            f"{config.pad_token_id} holds; lower data.max_seq_length to {config.max_tokens}"
        )


def roberta_trunk(config: RobertaConfig, add_pooler: bool) -> BertTrunk:
    """BERT's trunk (embeddings, encoder, pooler) under the name ``roberta``: the same weights."""
    return BertTrunk(config, add_pooler=add_pooler, name="roberta")


def run_trunk(trunk: BertTrunk, input_ids, attention_mask, token_type_ids, deterministic,
              position_ids):
    """The trunk on RoBERTa's positions (unless ``position_ids`` are given)."""
    check_tokens_fit(trunk.config, input_ids)
    if position_ids is None:
        position_ids = position_ids_from_input_ids(input_ids, trunk.config.pad_token_id)
    return trunk(input_ids, attention_mask, token_type_ids, deterministic, position_ids)


class RobertaTrunk(BertTrunk):
    """BERT's trunk on RoBERTa's positions, as one module (the trunk of the shared heads)."""

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        check_tokens_fit(self.config, input_ids)
        if position_ids is None:
            position_ids = position_ids_from_input_ids(input_ids, self.config.pad_token_id)
        return super().__call__(input_ids, attention_mask, token_type_ids, deterministic, position_ids)


class RobertaModel(nn.Module):
    """The bare trunk with its pooler: HF's ``RobertaModel``."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        hidden, pooled = run_trunk(roberta_trunk(self.config, add_pooler=True), input_ids,
                                   attention_mask, token_type_ids, deterministic, position_ids)
        return {"last_hidden_state": hidden, "pooler_output": pooled}


class RobertaLMHead(nn.Module):
    """dense -> GELU -> layer_norm -> decoder tied to the word embeddings -> + bias (HF
    ``lm_head``). The activation is exact GELU whatever ``hidden_act`` says, as in HF."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, hidden_BxPxD, word_embeddings_VxD):
        c = self.config
        h_BxPxD = ACTIVATIONS["gelu"](dense(c, c.hidden_size, ("embed", "mlp"), "dense")(hidden_BxPxD))
        h_BxPxD = layer_norm(c, name="layer_norm")(h_BxPxD)
        return tied_decoder(self, c, h_BxPxD, word_embeddings_VxD)


class RobertaForMaskedLM(nn.Module):
    """RoBERTa's pretraining model: masked LM only (no next-sentence head), trunk without pooler."""

    config: RobertaConfig

    def setup(self):
        self.roberta = roberta_trunk(self.config, add_pooler=False)
        self.lm_head = RobertaLMHead(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, masked_positions=None):
        hidden_BxLxD, _ = run_trunk(self.roberta, input_ids, attention_mask, token_type_ids,
                                    deterministic, position_ids)
        hidden_BxPxD = gather_positions(hidden_BxLxD, masked_positions)
        word_embeddings_VxD = self.roberta.embeddings.word_embeddings.embedding
        return {"mlm_logits": self.lm_head(hidden_BxPxD, word_embeddings_VxD)}


class RobertaClassificationHead(nn.Module):
    """<s> token -> dropout -> dense -> tanh -> dropout -> out_proj (HF ``classifier``); every
    example's <s> at ``cls_positions [B, P]`` (packed rows) -> ``[B, P, num_labels]``."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, hidden_BxLxD, deterministic, cls_positions_BxP=None):
        c = self.config
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        x_BxD = Dropout(rate)(first_token(hidden_BxLxD, cls_positions_BxP), deterministic=deterministic)
        x_BxD = jnp.tanh(dense(c, c.hidden_size, ("embed", "mlp"), "dense")(x_BxD))
        x_BxD = Dropout(rate)(x_BxD, deterministic=deterministic)
        return dense(c, c.num_labels, ("mlp", None), "out_proj")(x_BxD)


class RobertaForSequenceClassification(nn.Module):
    """The classification head on the trunk (no pooler); one label means regression. Packed rows
    pass ``position_ids`` (each example counted from ``pad_token_id + 1``) and ``cls_positions``."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None, cls_positions=None):
        hidden_BxLxD, _ = run_trunk(roberta_trunk(self.config, add_pooler=False), input_ids,
                                    attention_mask, token_type_ids, deterministic, position_ids)
        logits = RobertaClassificationHead(self.config, name="classifier")(
            hidden_BxLxD, deterministic, cls_positions)
        return {"logits": logits}


class RobertaForMultipleChoice(nn.Module):
    """Every choice through the trunk *with* its pooler -> dropout (``hidden_dropout_prob``;
    HF ignores ``classifier_dropout`` here) -> ``classifier`` (hidden -> 1); logits ``[B, C]``
    (HF's ``RobertaForMultipleChoice``, also XLM-RoBERTa's and CamemBERT's)."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True,
                 position_ids=None):
        c = self.config
        num_choices, rows = flatten_choices(input_ids, attention_mask, token_type_ids, position_ids)
        ids, mask, types, positions = rows
        _, pooled_NxD = run_trunk(roberta_trunk(c, add_pooler=True), ids, mask, types,
                                  deterministic, positions)
        pooled_NxD = Dropout(c.hidden_dropout_prob)(pooled_NxD, deterministic=deterministic)
        scores_Nx1 = dense(c, 1, ("embed", None), "classifier")(pooled_NxD)
        return {"logits": scores_Nx1.reshape(-1, num_choices)}


def _size(layers: int, hidden: int, heads: int) -> dict:
    return dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                intermediate_size=4 * hidden)


# Published sizes: distilroberta-base (Sanh et al. 2019), roberta-base/-large (Liu et al. 2019).
PRESETS = {
    "distil": _size(6, 768, 12),
    "base": _size(12, 768, 12),
    "large": _size(24, 1024, 16),
}

SPEC = register(FamilySpec(
    name="roberta",
    model_types=MODEL_TYPES,
    config_cls=RobertaConfig,
    trunk="roberta",
    models={
        None: (RobertaModel, "RobertaModel"),
        "pretraining": (RobertaForMaskedLM, "RobertaForMaskedLM"),
        "classification": (RobertaForSequenceClassification, "RobertaForSequenceClassification"),
        "multiple_choice": (RobertaForMultipleChoice, "RobertaForMultipleChoice"),
    },
    architectures_by_model_type={
        "xlm-roberta": {None: "XLMRobertaModel", "pretraining": "XLMRobertaForMaskedLM",
                        "classification": "XLMRobertaForSequenceClassification",
                        "multiple_choice": "XLMRobertaForMultipleChoice"},
        "camembert": {None: "CamembertModel", "pretraining": "CamembertForMaskedLM",
                      "classification": "CamembertForSequenceClassification",
                      "multiple_choice": "CamembertForMultipleChoice"},
    },
    head_prefixes=("lm_head.", "classifier."),
    layer_depth=layer_depth,  # BERT's: the same embeddings/encoder/layer paths
    # Only RobertaModel and *ForMultipleChoice have a pooler; other head checkpoints have none.
    optional_prefixes=("roberta.pooler.",),
    ignored=(
        "roberta.embeddings.position_ids",  # buffers in older checkpoints
        "roberta.embeddings.token_type_ids",
        "lm_head.decoder.weight",  # tied to the word embeddings
        "lm_head.decoder.bias",  # tied to lm_head.bias
    ),
    presets=PRESETS,
    pretraining_outputs=("mlm_logits",),
    first_position=lambda config: config.pad_token_id + 1,
    trunk_module=lambda config, name: RobertaTrunk(config, add_pooler=False, name=name),
    hf_prefix="Roberta",
))
