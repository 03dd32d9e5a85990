"""The token-classification and QA heads on the families their own test files do not cover
(RoBERTa, XLM-R, ALBERT, ELECTRA; BERT and DistilBERT are in test_token_classification_parity.py
and test_question_answering_head.py), against Hugging Face PyTorch on random tiny models and
padded batches: logits within 1e-5, the loss with labels equal to HF's, every weight's gradient
within 1e-4 relative (incl. the padding rows of the embedding tables, which neither side trains
through the lookup), and export -> the ``Auto*`` class -> the same logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_family_albert as albert_tests
import test_family_electra as electra_tests
import test_family_roberta as roberta_tests
import torch
import transformers
from test_hf_parity import FORWARD_TOL, assert_close, assert_grads_close, hf_grads, jax_grads_as_hf

import jaxtl.hf
from jaxtl import heads

TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
HEAD_CLASS = {"token_classification": "ForTokenClassification",
              "question_answering": "ForQuestionAnswering"}
AUTO = {"token_classification": transformers.AutoModelForTokenClassification,
        "question_answering": transformers.AutoModelForQuestionAnswering}


def _family_case(family: str):
    """(HF class prefix, config, batch, randomize) of one family's tiny test model."""
    if family in ("roberta", "xlm-roberta"):
        config = roberta_tests.hf_config(family)
        prefix = roberta_tests.CASES[family][0]
        return prefix, config, roberta_tests.tiny_batch(config), roberta_tests.randomize
    if family == "albert":
        config = albert_tests.hf_config("grouped")
        batch = albert_tests.tiny_batch(2)
        return "Albert", config, batch, albert_tests.randomize
    config = electra_tests.hf_config("project")
    return "Electra", config, electra_tests.odd_batch(3), electra_tests.randomize


@pytest.fixture(scope="module", params=[
    (family, head) for family in ("roberta", "xlm-roberta", "albert", "electra")
    for head in ("token_classification", "question_answering")
], ids=lambda p: f"{p[0]}-{p[1]}")
def case(request, tmp_path_factory):
    family, head = request.param
    prefix, config, batch, randomize = _family_case(family)
    if head == "token_classification":
        config.id2label = dict(enumerate(TAGS))
        config.label2id = {v: k for k, v in config.id2label.items()}
    else:
        config.num_labels = 2  # qa_outputs: start and end
    torch.manual_seed(0)
    hf_model = randomize(getattr(transformers, prefix + HEAD_CLASS[head])(config), 5)
    folder = tmp_path_factory.mktemp(f"{family}-{head}")
    hf_model.save_pretrained(str(folder))
    return {"family": family, "head": head, "hf": hf_model, "batch": batch, "folder": folder,
            "pad": config.pad_token_id}


def _hf_targets(case) -> dict[str, np.ndarray]:
    """Labels HF takes: tags at ~2/3 of real positions (-100 elsewhere), or answer spans with a
    [CLS] (no answer) row."""
    batch = case["batch"]
    B, L = batch["input_ids"].shape
    rng = np.random.RandomState(1)
    if case["head"] == "token_classification":
        labels = rng.randint(0, len(TAGS), (B, L))
        hidden = (rng.rand(B, L) < 0.33) | (batch["attention_mask"] == 0)
        hidden[:, 0] = True
        return {"labels": np.where(hidden, -100, labels)}
    lengths = batch["attention_mask"].sum(1)
    start = np.array([min(2, n - 2) for n in lengths])
    start[-1] = 0  # no answer in this window: [CLS]
    end = np.minimum(start + 2, lengths - 1)
    end[-1] = 0
    return {"start_positions": start, "end_positions": end}


def _torch(batch, keys):
    return {k: torch.from_numpy(np.asarray(batch[k])) for k in keys}


def test_logits_loss_and_every_gradient_match_hf(case):
    batch, reference, head = case["batch"], case["hf"], case["head"]
    targets = _hf_targets(case)
    reference.zero_grad()
    ref = reference(**_torch(batch, ("input_ids", "attention_mask", "token_type_ids")),
                    **_torch(targets, targets))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["folder"], head=head, new_heads=False)
    task = heads.get(head).task(model.config)
    jbatch = {k: jnp.asarray(v) for k, v in {**batch, **targets}.items()}
    jbatch["example_weight"] = jnp.ones(batch["input_ids"].shape[0], jnp.float32)

    def loss_fn(p):
        outputs = task.forward(model.apply, p, jbatch, deterministic=True)
        loss, _ = task.loss(outputs, jbatch)
        return loss, outputs

    (loss, outputs), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    what = f"{case['family']} {head}"
    if head == "token_classification":
        assert_close(outputs["logits"], ref.logits.detach().numpy(), FORWARD_TOL, f"{what} logits")
    else:
        for end in ("start", "end"):
            assert_close(outputs[f"{end}_logits"], getattr(ref, f"{end}_logits").detach().numpy(),
                         FORWARD_TOL, f"{what} {end} logits")
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{what} loss")
    jax_grads, torch_grads = jax_grads_as_hf(grads), hf_grads(reference)
    words = next(n for n in torch_grads if n.endswith("word_embeddings.weight"))
    assert not jax_grads[words][case["pad"]].any()  # as HF's padding_idx
    assert_grads_close(jax_grads, torch_grads, f"{what} grads")


def test_export_loads_in_transformers_with_the_same_logits(case, tmp_path):
    model, params = jaxtl.hf.load(case["folder"], head=case["head"], new_heads=False)
    out = jaxtl.hf.save(model, params, tmp_path / "export")
    reloaded = AUTO[case["head"]].from_pretrained(str(out)).eval()
    assert type(reloaded) is type(case["hf"])
    inputs = _torch(case["batch"], ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        got, want = reloaded(**inputs), case["hf"](**inputs)
    keys = ("logits",) if case["head"] == "token_classification" else ("start_logits", "end_logits")
    for key in keys:
        assert_close(getattr(got, key).numpy(), getattr(want, key).numpy(), FORWARD_TOL,
                     f"{case['family']} exported {key}")
    if case["head"] == "token_classification":
        assert reloaded.config.id2label == dict(enumerate(TAGS))
    assert jaxtl.hf.head_of_folder(out) == case["head"]
