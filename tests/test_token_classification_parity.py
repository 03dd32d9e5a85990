"""Token classification head against Hugging Face PyTorch: BertForTokenClassification and
DistilBertForTokenClassification (random tiny models, unit-scale weights, padded batches).

Logits within 1e-5, the loss with labels (incl. -100 positions) equal to HF's ``outputs.loss``,
every weight's gradient within 1e-4 relative (tolerances of tests/test_hf_parity.py), and export
-> the transformers class -> the same logits. Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from test_hf_parity import (
    FORWARD_TOL, TINY, assert_close, assert_grads_close, hf_grads, jax_grads_as_hf, randomize,
    tiny_batch, torch_inputs,
)

import jaxtl.hf
from jaxtl import families, heads, steps

NUM_TAGS = 5
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def hf_model(family: str):
    id2label = dict(enumerate(TAGS))
    label2id = {v: k for k, v in id2label.items()}
    if family == "bert":
        config = transformers.BertConfig(**TINY, hidden_act="gelu", layer_norm_eps=1e-7,
                                         id2label=id2label, label2id=label2id)
        cls = transformers.BertForTokenClassification
    else:
        config = transformers.DistilBertConfig(
            vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
            max_position_embeddings=24, id2label=id2label, label2id=label2id,
        )
        cls = transformers.DistilBertForTokenClassification
    torch.manual_seed(0)
    return randomize(cls(config), seed=3)


def token_labels(batch) -> np.ndarray:
    """HF-style labels [B, L]: a tag at ~2/3 of the real positions, -100 at the rest and at pads."""
    rng = np.random.RandomState(1)
    labels = rng.randint(0, NUM_TAGS, batch["input_ids"].shape)
    hidden = (rng.rand(*labels.shape) < 0.33) | (batch["attention_mask"] == 0)
    hidden[:, 0] = True  # [CLS]
    return np.where(hidden, -100, labels)


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def case(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(f"tok-{family}")
    model = hf_model(family)
    model.save_pretrained(str(folder))
    batch = tiny_batch(2)
    if family == "distilbert":
        batch = {k: v for k, v in batch.items() if k != "token_type_ids"}
    return {"family": family, "folder": folder, "hf": model, "batch": batch}


def jax_batch(batch):
    out = {k: jnp.asarray(v) for k, v in batch.items()}
    out.setdefault("token_type_ids", jnp.zeros_like(out["input_ids"]))
    return out


def test_registry_builds_the_generic_head_for_every_family():
    for name in ("bert", "distilbert"):
        spec = families.get(name)
        assert "token_classification" in spec.heads
        assert spec.architecture("token_classification") == spec.hf_prefix + "ForTokenClassification"
        assert families.for_architecture(spec.hf_prefix + "ForTokenClassification") == (
            spec, "token_classification")


def test_logits_loss_and_grads_match_hf(case):
    batch, reference = case["batch"], case["hf"]
    labels = token_labels(batch)
    reference.zero_grad()
    ref = reference(**torch_inputs(batch), labels=torch.from_numpy(labels))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["folder"], head="token_classification")
    assert isinstance(model, heads.TokenClassificationModel)
    assert model.config.labels == TAGS
    jbatch = jax_batch(batch)
    jbatch["labels"] = jnp.asarray(labels)
    jbatch["example_weight"] = jnp.ones(len(labels), jnp.float32)
    task = heads.get("token_classification").task(model.config)

    def loss_fn(p):
        outputs = task.forward(model.apply, p, jbatch, deterministic=True)
        loss, metrics = task.loss(outputs, jbatch)
        return loss, (outputs, metrics)

    (loss, (outputs, metrics)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    family = case["family"]
    assert outputs["logits"].shape == (*labels.shape, NUM_TAGS)
    assert_close(outputs["logits"], ref.logits.detach().numpy(), FORWARD_TOL, f"{family} token logits")
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{family} token loss")
    assert float(metrics["token_count"]) == float((labels != -100).sum())
    assert_grads_close(jax_grads_as_hf(grads), hf_grads(reference), f"{family} token grads")
    # predicted_ids: the argmax, padded with -1 to the model's max length for concatenation
    predicted = np.asarray(outputs["predicted_ids"])
    L = labels.shape[1]
    assert predicted.shape == (len(labels), model.config.max_position_embeddings)
    np.testing.assert_array_equal(predicted[:, :L], ref.logits.argmax(-1).numpy())
    assert (predicted[:, L:] == -1).all()


def test_padding_rows_and_ignored_labels_do_not_count(case):
    """A zero-weight row and -100 positions leave the loss and the sums unchanged."""
    model, params = jaxtl.hf.load(case["folder"], head="token_classification")
    batch = jax_batch(case["batch"])
    labels = token_labels(case["batch"])
    logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                         batch["token_type_ids"])["logits"]
    full = {"labels": jnp.asarray(labels), "example_weight": jnp.ones(len(labels))}
    loss, sums = steps.token_classification_loss(logits, full)
    weight = jnp.asarray([1.0, 1.0, 1.0, 0.0])
    garbage = labels.copy()
    garbage[3] = 1  # labels of the padding row must not matter
    with_pad = {"labels": jnp.asarray(garbage), "example_weight": weight}
    loss_pad, sums_pad = steps.token_classification_loss(logits, with_pad)
    three = {"labels": jnp.asarray(labels[:3]), "example_weight": jnp.ones(3)}
    loss_three, sums_three = steps.token_classification_loss(logits[:3], three)
    assert abs(float(loss_pad) - float(loss_three)) < 1e-6
    assert float(sums_pad["token_count"]) == float(sums_three["token_count"])
    assert float(sums_pad["count"]) == 3.0
    assert float(loss) != pytest.approx(float(loss_three))  # the 4th row did count before
    summary = steps.summarize(jax.device_get(sums_three))
    assert summary["loss"] == pytest.approx(float(loss_three), rel=1e-6)


def test_export_loads_in_transformers_with_the_same_logits(case, tmp_path):
    model, params = jaxtl.hf.load(case["folder"], head="token_classification")
    out = jaxtl.hf.save(model, params, tmp_path / "export")
    reloaded = transformers.AutoModelForTokenClassification.from_pretrained(str(out)).eval()
    expected_cls = {"bert": transformers.BertForTokenClassification,
                    "distilbert": transformers.DistilBertForTokenClassification}[case["family"]]
    assert type(reloaded) is expected_cls
    assert reloaded.config.id2label == dict(enumerate(TAGS))
    batch = case["batch"]
    with torch.no_grad():
        exported = reloaded(**torch_inputs(batch)).logits.numpy()
        original = case["hf"](**torch_inputs(batch)).logits.numpy()
    assert_close(exported, original, FORWARD_TOL, f"{case['family']} exported token logits")
    # and back: the exported folder's head is found from `architectures`
    assert jaxtl.hf.head_of_folder(out) == "token_classification"


def test_dropout_before_the_classifier_follows_hf(case):
    """BertForTokenClassification drops with classifier_dropout; DistilBertForTokenClassification
    with `dropout` (hidden_dropout_prob), ignoring seq_classif_dropout (jaxtl classifier_dropout)."""
    dropped = case["family"] == "bert"  # distilbert: hidden_dropout_prob = 0 here
    model, params = jaxtl.hf.load(case["folder"], head="token_classification",
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  classifier_dropout=0.9)
    batch = jax_batch(case["batch"])
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    exact = model.apply({"params": params}, *args, deterministic=True)["logits"]
    noisy = model.apply({"params": params}, *args, deterministic=False,
                        rngs={"dropout": jax.random.key(0)})["logits"]
    assert (not np.allclose(exact, noisy, atol=1e-6)) == dropped
