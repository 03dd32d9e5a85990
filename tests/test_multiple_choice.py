"""Multiple choice (SWAG-style) on every family, against Hugging Face PyTorch ``*ForMultipleChoice``.

Parity: random tiny models (2 layers, hidden 32, unit-scale weights as test_hf_parity.randomize)
of BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ALBERT, DistilBERT and ELECTRA (two sequence-summary
settings) on padded ``[B, C, L]`` batches: logits within 1e-5, the loss with labels equal to HF's,
every weight's gradient within 1e-4 relative (test_hf_parity's tolerances), and export ->
``AutoModelForMultipleChoice`` -> the same logits. Then the data (hand-checked encodings,
truncation, list columns, bad rows), and the CLI end to end: `jaxtl finetune` lowers the loss,
`jaxtl evaluate` / `jaxtl predict` on best/, `transformers` on the export gives predict's
probabilities, and bad input is one DataError line (exit 2, no traceback).
Run with ``-s`` to see the measured differences (``PARITY`` lines).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import yaml
from helpers import NEGATIVE, NEUTRAL_WORDS, POSITIVE, make_tiny_checkpoint, make_tokenizer, read_metrics, write_csv
from test_hf_parity import FORWARD_TOL, assert_close, assert_grads_close, hf_grads, jax_grads_as_hf

import jaxtl.hf
from jaxtl import cli, heads, steps
from jaxtl.config import MultipleChoiceDataConfig
from jaxtl.data import multiple_choice as mc_data
from jaxtl.errors import DataError

REPO = Path(__file__).resolve().parents[1]
LAYERS = dict(num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=24)
BERTLIKE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, **LAYERS)

# case -> (HF class prefix, config class, config fields, special ids: cls/bos, sep/eos, pad).
# Each differs from its family's defaults where jaxtl must follow: activation, LayerNorm
# epsilon, token types, pad id (RoBERTa positions), E != D (ALBERT, ELECTRA), the sequence summary.
CASES = {
    "bert": ("Bert", transformers.BertConfig,
             dict(BERTLIKE, hidden_act="gelu", layer_norm_eps=1e-7, type_vocab_size=3), (2, 3, 0)),
    "roberta": ("Roberta", transformers.RobertaConfig,
                dict(BERTLIKE, hidden_act="gelu", layer_norm_eps=1e-5, type_vocab_size=1,
                     pad_token_id=1), (0, 2, 1)),
    "xlm-roberta": ("XLMRoberta", transformers.XLMRobertaConfig,
                    dict(BERTLIKE, hidden_act="relu", layer_norm_eps=1e-3, type_vocab_size=2,
                         pad_token_id=1), (0, 2, 1)),
    "camembert": ("Camembert", transformers.CamembertConfig,
                  dict(BERTLIKE, hidden_act="gelu_new", type_vocab_size=1, pad_token_id=0,
                       bos_token_id=5, eos_token_id=6), (5, 6, 0)),
    "albert": ("Albert", transformers.AlbertConfig,
               dict(BERTLIKE, embedding_size=16, hidden_act="gelu_new", num_hidden_groups=1,
                    classifier_dropout_prob=0.1), (2, 3, 0)),
    "distilbert": ("DistilBert", transformers.DistilBertConfig,
                   dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                        max_position_embeddings=24, activation="gelu"), (2, 3, 0)),
    "electra": ("Electra", transformers.ElectraConfig,
                dict(BERTLIKE, embedding_size=24, hidden_act="gelu", layer_norm_eps=1e-7),
                (2, 3, 0)),
    "electra-mean": ("Electra", transformers.ElectraConfig,
                     dict(BERTLIKE, embedding_size=32, summary_type="mean", summary_use_proj=False,
                          summary_activation="tanh"), (2, 3, 0)),
}


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Unit-scale random weights (as test_hf_parity.randomize; every family's LayerNorm names)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            elif "embeddings" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return model.eval()


def choice_batch(case: str, seed: int = 0) -> dict[str, np.ndarray]:
    """B=2 examples of C=3 choices, L=11: choices of different lengths (padded), pairs with
    segment ids where the family has token types."""
    _, _, fields, (cls_id, sep_id, pad_id) = CASES[case]
    rng = np.random.RandomState(seed)
    B, C, L = 2, 3, 11
    lengths = np.array([[11, 8, 6], [5, 11, 9]])
    first = np.array([[4, 3, 2], [2, 5, 4]])  # tokens of the context before its [SEP]
    mask = (np.arange(L) < lengths[..., None]).astype(np.int64)
    ids = rng.randint(7, 64, (B, C, L))
    ids[..., 0] = cls_id
    types = np.zeros((B, C, L), np.int64)
    for b in range(B):
        for c in range(C):
            ids[b, c, first[b, c] + 1] = sep_id
            ids[b, c, lengths[b, c] - 1] = sep_id
            if fields.get("type_vocab_size", 2) > 1:
                types[b, c, first[b, c] + 2: lengths[b, c]] = 1
    batch = {"input_ids": np.where(mask == 1, ids, pad_id), "attention_mask": mask,
             "token_type_ids": types}
    if case == "distilbert":
        del batch["token_type_ids"]  # HF's DistilBERT takes none
    return batch


def torch_inputs(batch):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def jax_batch(batch):
    out = {k: jnp.asarray(v) for k, v in batch.items()}
    out.setdefault("token_type_ids", jnp.zeros_like(out["input_ids"]))
    return out


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    name = request.param
    prefix, config_cls, fields, _ = CASES[name]
    torch.manual_seed(0)
    model = getattr(transformers, prefix + "ForMultipleChoice")(config_cls(**fields))
    model = randomize(model, seed=3)
    folder = tmp_path_factory.mktemp(f"mc-{name}")
    model.save_pretrained(str(folder))
    return {"name": name, "prefix": prefix, "folder": folder, "hf": model, "batch": choice_batch(name)}


def test_logits_loss_and_grads_match_hf(case):
    batch, reference = case["batch"], case["hf"]
    labels = np.array([2, 0])
    reference.zero_grad()
    ref = reference(**torch_inputs(batch), labels=torch.from_numpy(labels))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["folder"], head="multiple_choice")
    assert type(model).__name__ == f"{case['prefix'].replace('XLMRoberta', 'Roberta').replace('Camembert', 'Roberta')}ForMultipleChoice"
    jbatch = jax_batch(batch)
    jbatch["labels"] = jnp.asarray(labels)
    jbatch["example_weight"] = jnp.ones(len(labels), jnp.float32)
    task = heads.get("multiple_choice").task(model.config)

    def loss_fn(p):
        outputs = task.forward(model.apply, p, jbatch, deterministic=True)
        loss, metrics = task.loss(outputs, jbatch)
        return loss, (outputs, metrics)

    (loss, (outputs, metrics)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    name = case["name"]
    assert outputs["logits"].shape == (2, 3)
    assert_close(outputs["logits"], ref.logits.detach().numpy(), FORWARD_TOL, f"{name} choice logits")
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{name} choice loss")
    assert float(metrics["correct"]) == float((ref.logits.argmax(-1).numpy() == labels).sum())
    jax_grads, torch_grads = jax_grads_as_hf(grads), hf_grads(reference)
    if CASES[name][2].get("summary_type") == "mean":
        # Known difference: HF's nn.Embedding(padding_idx=pad) never gives the padding row a
        # gradient; jaxtl's embeddings do. Only a head that reads padding positions (the mean
        # summary) shows it, and only in that row.
        pad = CASES[name][3][2]
        words = "electra.embeddings.word_embeddings.weight"
        assert not torch_grads[words][pad].any() and jax_grads[words][pad].any()
        jax_grads[words] = np.where(np.arange(len(jax_grads[words]))[:, None] == pad, 0.0,
                                    jax_grads[words])
    assert_grads_close(jax_grads, torch_grads, f"{name} choice grads")


def test_export_loads_in_transformers_with_the_same_logits(case, tmp_path):
    model, params = jaxtl.hf.load(case["folder"], head="multiple_choice")
    out = jaxtl.hf.save(model, params, tmp_path / "export")
    reloaded = transformers.AutoModelForMultipleChoice.from_pretrained(str(out)).eval()
    assert type(reloaded).__name__ == f"{case['prefix']}ForMultipleChoice"
    inputs = torch_inputs(case["batch"])
    with torch.no_grad():
        exported = reloaded(**inputs).logits.numpy()
        original = case["hf"](**inputs).logits.numpy()
    assert_close(exported, original, FORWARD_TOL, f"{case['name']} exported choice logits")
    assert jaxtl.hf.head_of_folder(out) == "multiple_choice"


def test_padding_rows_do_not_count():
    """A zero-weight row leaves the loss and the sums as the real rows alone give them."""
    logits = jnp.asarray([[0.1, 2.0, -1.0], [1.0, 0.0, 0.5], [3.0, 3.0, 3.0]])
    full = {"labels": jnp.asarray([1, 2, 0]), "example_weight": jnp.asarray([1.0, 1.0, 0.0])}
    loss, sums = steps.multiple_choice_loss(logits, full)
    two, sums_two = steps.multiple_choice_loss(logits[:2], {"labels": full["labels"][:2],
                                                             "example_weight": jnp.ones(2)})
    expected = -np.mean([jax.nn.log_softmax(logits[0])[1], jax.nn.log_softmax(logits[1])[2]])
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss) == pytest.approx(float(two), rel=1e-6)
    assert float(sums["count"]) == 2.0 and float(sums["correct"]) == 1.0
    summary = steps.summarize(jax.device_get(sums))
    assert summary["accuracy"] == 0.5 and summary["loss"] == pytest.approx(float(expected), rel=1e-6)
