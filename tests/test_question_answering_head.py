"""The question-answering head against Hugging Face PyTorch: ``BertForQuestionAnswering`` and
``DistilBertForQuestionAnswering`` with unit-scale random weights, on padded batches.

Logits within 1e-5 (of max(1, max|hf|)), the loss equal to HF's loss with ``start_positions`` /
``end_positions`` (including HF's clamping: a negative position counts as 0, one past the input is
ignored), every gradient within 1e-4 relative (tests/test_hf_parity.py's rule), and an export that
``AutoModelForQuestionAnswering`` loads to the same logits. Run with ``-s`` for measured numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxtl.hf
from jaxtl import steps
from test_hf_parity import (
    FORWARD_TOL, assert_close, assert_grads_close, hf_grads, jax_grads_as_hf,
    randomize as randomize_bert, tiny_batch as bert_batch, write_tokenizer as write_bert_tokenizer,
    TINY as BERT_TINY,
)
from test_family_distilbert import (
    TINY as DISTILBERT_TINY, randomize as randomize_distilbert, tiny_batch as distilbert_batch,
    write_tokenizer as write_distilbert_tokenizer,
)


def _bert():
    config = transformers.BertConfig(**BERT_TINY, hidden_act="gelu", type_vocab_size=3,
                                     layer_norm_eps=1e-7)
    torch.manual_seed(0)
    return randomize_bert(transformers.BertForQuestionAnswering(config), 3), bert_batch(3)


def _distilbert():
    config = transformers.DistilBertConfig(**DISTILBERT_TINY, activation="gelu",
                                           sinusoidal_pos_embds=False, qa_dropout=0.3)
    torch.manual_seed(0)
    model = randomize_distilbert(transformers.DistilBertForQuestionAnswering(config), 4, False)
    batch = distilbert_batch()
    batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
    return model, batch


FAMILIES = {"bert": (_bert, write_bert_tokenizer), "distilbert": (_distilbert, write_distilbert_tokenizer)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def case(request, tmp_path_factory):
    build, write_tokenizer = FAMILIES[request.param]
    hf_model, batch = build()
    folder = tmp_path_factory.mktemp(f"qa-{request.param}")
    hf_model.save_pretrained(str(folder))
    write_tokenizer(folder)
    model, params = jaxtl.hf.load(folder, head="question_answering", new_heads=False)
    return {"name": request.param, "hf": hf_model, "batch": batch, "folder": folder,
            "model": model, "params": params}


def _torch(batch, keys=("input_ids", "attention_mask", "token_type_ids")):
    out = {k: torch.from_numpy(np.asarray(batch[k])) for k in keys if k in batch}
    return out


def _hf_inputs(case, batch):
    keys = ("input_ids", "attention_mask") + (("token_type_ids",) if case["name"] == "bert" else ())
    return _torch(batch, keys)


def _apply(case, params, batch):
    return case["model"].apply(
        {"params": params}, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]), deterministic=True)


def test_head_registered_for_both_families(case):
    assert type(case["model"]).__name__ == "QuestionAnsweringHead"
    assert jaxtl.hf.head_of_folder(case["folder"]) == "question_answering"
    assert case["params"]["qa_outputs"]["kernel"].shape == (32, 2)


def test_logits_parity(case):
    with torch.no_grad():
        ref = case["hf"](**_hf_inputs(case, case["batch"]))
    out = _apply(case, case["params"], case["batch"])
    L = case["batch"]["input_ids"].shape[1]
    assert out["start_logits"].shape == out["end_logits"].shape == (len(case["batch"]["input_ids"]), L)
    for end in ("start", "end"):
        assert_close(out[f"{end}_logits"], ref[f"{end}_logits"].numpy(), FORWARD_TOL,
                     f"{case['name']} {end}_logits")


def test_loss_and_gradients_parity(case):
    batch = dict(case["batch"])
    B, L = batch["input_ids"].shape
    # In range, [CLS] (no answer), a negative one (HF clamps to 0) and one past the input (HF
    # ignores it: clamped to L = ignore_index), so start and end have different denominators.
    batch["start_positions"] = np.array([3, 0, -2, 1] [:B], np.int64)
    batch["end_positions"] = np.array([5, 0, L + 4, 2][:B], np.int64)
    hf = case["hf"]
    hf.zero_grad()
    ref = hf(**_hf_inputs(case, batch), start_positions=torch.from_numpy(batch["start_positions"]),
             end_positions=torch.from_numpy(batch["end_positions"]))
    ref.loss.backward()
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    jbatch["example_weight"] = jnp.ones(B, jnp.float32)

    def loss_fn(p):
        outputs = steps.QUESTION_ANSWERING.forward(case["model"].apply, p, jbatch, deterministic=True)
        return steps.question_answering_loss(outputs, jbatch)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(case["params"])
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{case['name']} qa loss")
    assert float(metrics["end_count"]) == B - 1  # the row past the input is ignored
    jax_grads, torch_grads = jax_grads_as_hf(grads), hf_grads(hf)
    # Padded positions' logits are inside HF's QA softmax (it masks nothing), yet the [PAD] row of
    # the word embeddings gets no gradient through them, in HF (padding_idx) as in jaxtl (lookup).
    name = next(n for n in torch_grads if n.endswith("word_embeddings.weight"))
    pad = hf.config.pad_token_id
    assert not torch_grads[name][pad].any() and not jax_grads[name][pad].any()
    assert_grads_close(jax_grads, torch_grads, f"{case['name']} qa grads")


def test_padding_rows_do_not_count(case):
    """A padding row (example_weight 0) changes neither the loss nor the metric sums."""
    batch = {k: jnp.asarray(v) for k, v in case["batch"].items()}
    B = batch["input_ids"].shape[0]
    batch["start_positions"] = jnp.arange(B) + 1
    batch["end_positions"] = jnp.arange(B) + 2
    outputs = _apply(case, case["params"], batch)
    weight = jnp.ones(B).at[-1].set(0.0)
    loss, m = steps.question_answering_loss(outputs, {**batch, "example_weight": weight})
    cut = {k: v[:-1] for k, v in batch.items()}
    loss_cut, m_cut = steps.question_answering_loss(
        {k: v[:-1] for k, v in outputs.items()}, {**cut, "example_weight": jnp.ones(B - 1)})
    np.testing.assert_allclose(loss, loss_cut, rtol=1e-6)
    np.testing.assert_allclose(m["loss_sum"], m_cut["loss_sum"], rtol=1e-6)
    assert float(m["count"]) == B - 1


def test_export_round_trip(case, tmp_path):
    out = jaxtl.hf.save(case["model"], case["params"], tmp_path / "export")
    reloaded = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out)).eval()
    assert type(reloaded).__name__ == type(case["hf"]).__name__
    with torch.no_grad():
        ref = reloaded(**_hf_inputs(case, case["batch"]))
    out = _apply(case, case["params"], case["batch"])
    for end in ("start", "end"):
        assert_close(out[f"{end}_logits"], ref[f"{end}_logits"].numpy(), FORWARD_TOL,
                     f"{case['name']} exported {end}_logits")


def test_dropout_only_where_hf_has_it(case):
    """HF's BertForQuestionAnswering has no dropout before qa_outputs (classifier_dropout is
    unused); DistilBertForQuestionAnswering applies qa_dropout. With the trunk's dropout off,
    a training-mode forward equals the deterministic one exactly when the head has none."""
    model, params = jaxtl.hf.load(case["folder"], head="question_answering", hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, classifier_dropout=0.5)
    batch = case["batch"]
    args = [jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    train = model.apply({"params": params}, *args, deterministic=False,
                        rngs={"dropout": jax.random.key(0)})["start_logits"]
    evaluation = model.apply({"params": params}, *args, deterministic=True)["start_logits"]
    same = bool(np.allclose(train, evaluation, atol=1e-6))
    assert same == (case["name"] == "bert"), f"{case['name']}: dropout applied = {not same}"
