"""Task heads on the BERT trunk: the bare model, MLM+NSP pretraining, and sequence classification.

Each model has the trunk under ``bert`` (as Hugging Face's ``BertFor...`` classes do) and returns
a dict of named arrays:

* :class:`BertModel` -> ``last_hidden_state [B, L, D]``, ``pooler_output [B, D]``
* :class:`BertForPreTraining` -> ``mlm_logits [B, L, V]`` (or ``[B, P, V]`` when
  ``masked_positions [B, P]`` is given), ``nsp_logits [B, 2]``
* :class:`BertForSequenceClassification` -> ``logits [B, num_labels]``

Call them as ``model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
deterministic=True)``; with ``deterministic=False`` pass ``rngs={"dropout": key}``.
"""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from jaxtl.model import ACTIVATIONS, BertConfig, BertTrunk, constrain, dense, layer_norm, partitioned

HEADS = (None, "pretraining", "classification")


class BertModel(nn.Module):
    """The bare trunk: HF's ``BertModel``."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        hidden, pooled = BertTrunk(self.config, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic
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
        # Pin the decoder input to batch-sharded, embed-replicated. Left to propagation, the
        # backward of this einsum on a data x fsdp x tensor mesh with all three axes > 1 and few
        # masked positions (P <= 4) is partitioned wrongly by XLA (silently wrong gradients for
        # the whole trunk; tests/test_sharding.py checks the 2x2x2 mesh against one device).
        h_BxPxD = constrain(h_BxPxD, ("batch", "length", "embed"))
        bias_V = self.param(
            "bias", partitioned(nn.initializers.zeros, ("vocab",)), (c.vocab_size,), c.storage_dtype
        )
        logits_BxPxV = jnp.einsum(
            "bpd,vd->bpv", h_BxPxD, word_embeddings_VxD.astype(h_BxPxD.dtype)
        ) + bias_V.astype(h_BxPxD.dtype)
        return constrain(logits_BxPxV, ("batch", "length", "vocab"))


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

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        deterministic=True,
        masked_positions=None,
    ):
        hidden_BxLxD, pooled_BxD = self.bert(input_ids, attention_mask, token_type_ids, deterministic)
        if masked_positions is not None:
            # Only the masked positions go through the vocabulary projection (as in the original
            # BERT code): the decoder is the most expensive matmul of a small model.
            hidden_BxLxD = jnp.take_along_axis(hidden_BxLxD, masked_positions[..., None], axis=1)
        word_embeddings_VxD = self.bert.embeddings.word_embeddings.embedding
        mlm_logits, nsp_logits = self.cls(hidden_BxLxD, pooled_BxD, word_embeddings_VxD)
        return {"mlm_logits": mlm_logits, "nsp_logits": nsp_logits}


class BertForSequenceClassification(nn.Module):
    """pooler -> dropout -> dense; one label means regression (HF's ``num_labels=1``)."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        c = self.config
        _, pooled_BxD = BertTrunk(c, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic
        )
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        pooled_BxD = nn.Dropout(rate)(pooled_BxD, deterministic=deterministic)
        logits = dense(c, c.num_labels, ("embed", None), "classifier")(pooled_BxD)
        return {"logits": logits}


def build(config: BertConfig, head: str | None = None) -> nn.Module:
    """The model for ``head`` (None, ``"pretraining"`` or ``"classification"``)."""
    if head is None:
        return BertModel(config)
    if head == "pretraining":
        return BertForPreTraining(config)
    if head == "classification":
        return BertForSequenceClassification(config)
    raise ValueError(f"head={head!r} is unknown; use one of {HEADS}")


def head_of(model: nn.Module) -> str | None:
    return {BertModel: None, BertForPreTraining: "pretraining",
            BertForSequenceClassification: "classification"}[type(model)]
