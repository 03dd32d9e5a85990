"""jaxtl's RoBERTa family (roberta, xlm-roberta, camembert) against Hugging Face PyTorch.

Every reference number comes from ``transformers`` (fp32, ``model.eval()``), never from jaxtl.
Tiny random models get unit-scale weights (see :func:`randomize`), so that a wrong activation,
epsilon or position rule shows; tolerances are those of tests/test_hf_parity.py (forward
``<= 1e-5 x max(1, max|hf|)``, gradients ``<= 1e-4`` relative per weight, floored).

The batches are padded (pad id = the config's ``pad_token_id``) with rows of different lengths,
so RoBERTa's positions (``pad + 1 + cumsum(not pad)``) differ from BERT's per row; a negative
control shows BERT's positions break parity. The CLI tests use a tiny byte-level BPE
``RobertaTokenizer`` (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4), so the pad
id 1 runs through the data pipeline as with real RoBERTa tokenizers.

Run with ``-s`` to see the measured differences (lines starting ``PARITY``).
"""

from __future__ import annotations

import json
import logging
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
from flax import traverse_util
from helpers import read_metrics, sentiment_rows, write_csv
from safetensors.numpy import load_file
from test_hf_parity import (
    FORWARD_TOL, assert_close, assert_grads_close, differences, hf_grads, jax_grads_as_hf,
)

import jaxtl.hf
from jaxtl import cli, families, optim, sharding, steps
from jaxtl.config import MeshConfig, OptimConfig
from jaxtl.errors import CheckpointError, ConfigError
from jaxtl.families import roberta

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 96

TINY = dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=24)

# model_type -> (HF class prefix, config). Each differs in something jaxtl must honour: the
# activation (relu in the layers; the LM head's GELU is fixed whatever hidden_act says), token
# types (2 for xlm-roberta here), LayerNorm epsilon, the pad id (0 for camembert here: it moves
# every position), the number of labels (1 = regression).
CASES = {
    "roberta": ("Roberta", dict(hidden_act="gelu", layer_norm_eps=1e-5, type_vocab_size=1,
                                pad_token_id=1, num_labels=3)),
    "xlm-roberta": ("XLMRoberta", dict(hidden_act="relu", layer_norm_eps=1e-3, type_vocab_size=2,
                                       pad_token_id=1, num_labels=1)),
    "camembert": ("Camembert", dict(hidden_act="gelu_new", layer_norm_eps=1e-7, type_vocab_size=1,
                                    pad_token_id=0, bos_token_id=5, eos_token_id=6, num_labels=2)),
}
HEAD_CLASSES = {None: "Model", "pretraining": "ForMaskedLM",
                "classification": "ForSequenceClassification"}


def hf_class(model_type: str, head: str | None):
    return getattr(transformers, CASES[model_type][0] + HEAD_CLASSES[head])


def hf_config(model_type: str, **changes):
    prefix, fields = CASES[model_type]
    return getattr(transformers, prefix + "Config")(**{**TINY, **fields, **changes})


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Unit-scale random weights (as test_hf_parity.randomize; ``lm_head.layer_norm`` too)."""
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


def tiny_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """3 rows of 13 (odd sizes), two of them padded with the config's pad id; <s> ... </s>."""
    rng = np.random.RandomState(seed)
    B, L = 3, 13
    lengths = np.array([13, 8, 5])
    attention_mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int64)
    input_ids = rng.randint(7, config.vocab_size, (B, L))
    input_ids[:, 0] = config.bos_token_id
    input_ids[np.arange(B), lengths - 1] = config.eos_token_id
    input_ids = np.where(attention_mask == 1, input_ids, config.pad_token_id)
    token_type_ids = np.zeros((B, L), np.int64)
    if config.type_vocab_size > 1:
        token_type_ids[0, 7:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "token_type_ids": token_type_ids}


def torch_inputs(batch):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def jax_apply(model, params, batch, **extra):
    return model.apply({"params": params}, jnp.asarray(batch["input_ids"]),
                       jnp.asarray(batch["attention_mask"]), jnp.asarray(batch["token_type_ids"]),
                       deterministic=True, **extra)


@pytest.fixture(scope="module")
def make_case(tmp_path_factory):
    """``make_case(model_type)``: random HF bare, masked-LM and classification models saved to
    ``root/<head>``; memoised."""
    cases = {}

    def make(model_type: str) -> dict:
        if model_type not in cases:
            root = tmp_path_factory.mktemp(f"hf-{model_type}")
            num_labels = CASES[model_type][1]["num_labels"]
            labels = {i: f"label_{chr(ord('a') + i)}" for i in range(num_labels)}
            models = {}
            for seed, head in enumerate((None, "pretraining", "classification")):
                changes = {}
                if head == "classification":
                    changes = dict(id2label=labels, label2id={v: k for k, v in labels.items()})
                torch.manual_seed(0)
                model = randomize(hf_class(model_type, head)(hf_config(model_type, **changes)), seed)
                model.save_pretrained(str(root / str(head)))
                models[head] = model
            cases[model_type] = {"model_type": model_type, "root": root, "models": models,
                                 "batch": tiny_batch(models[None].config)}
        return cases[model_type]

    return make


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, make_case):
    return make_case(request.param)


# ------------------------------------------------------------------------------------ 1. forward


def test_forward_parity(case):
    """Trunk + pooler, MLM logits and classifier logits match HF on padded batches."""
    model_type, batch, hf_models = case["model_type"], case["batch"], case["models"]
    with torch.no_grad():
        ref = {head: m(**torch_inputs(batch)) for head, m in hf_models.items()}

    model, params = jaxtl.hf.load(case["root"] / "None", head=None)
    assert model.config.model_type == model_type
    out = jax_apply(model, params, batch)
    assert_close(out["last_hidden_state"], ref[None].last_hidden_state, FORWARD_TOL,
                 f"{model_type} last_hidden_state")
    assert_close(out["pooler_output"], ref[None].pooler_output, FORWARD_TOL,
                 f"{model_type} pooler_output")

    model, params = jaxtl.hf.load(case["root"] / "pretraining", head="pretraining")
    assert "pooler" not in params["roberta"]  # RobertaForMaskedLM has none
    out = jax_apply(model, params, batch)
    assert set(out) == {"mlm_logits"}
    assert_close(out["mlm_logits"], ref["pretraining"].logits, FORWARD_TOL, f"{model_type} mlm_logits")
    positions = np.array([[1, 4]] * 3)
    out = jax_apply(model, params, batch, masked_positions=jnp.asarray(positions))
    assert_close(out["mlm_logits"], ref["pretraining"].logits.numpy()[:, [1, 4]], FORWARD_TOL,
                 f"{model_type} mlm_logits at masked_positions")

    model, params = jaxtl.hf.load(case["root"] / "classification", head="classification")
    assert model.config.num_labels == CASES[model_type][1]["num_labels"]
    out = jax_apply(model, params, batch)
    assert_close(out["logits"], ref["classification"].logits, FORWARD_TOL, f"{model_type} logits")


def test_bert_positions_break_parity(make_case):
    """Negative control: BERT's positions 0..L-1 on RoBERTa weights must be far off, so the
    forward test does check RoBERTa's rule."""
    case = make_case("roberta")
    batch = case["batch"]
    with torch.no_grad():
        want = case["models"][None](**torch_inputs(batch)).last_hidden_state
    model, params = jaxtl.hf.load(case["root"] / "None")
    B, L = batch["input_ids"].shape
    bert_positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    got = jax_apply(model, params, batch, position_ids=bert_positions)["last_hidden_state"]
    abs_diff, _, scale = differences(got, want)
    print(f"PARITY control: BERT positions on RoBERTa weights: max_abs={abs_diff:.2e}")
    assert abs_diff > 100 * FORWARD_TOL * scale


def test_position_ids_rule():
    """HF's create_position_ids_from_input_ids, including a pad id inside a row."""
    ids = np.array([[0, 7, 8, 2, 1, 1], [0, 1, 9, 2, 1, 1]])
    want = transformers.models.roberta.modeling_roberta.RobertaEmbeddings \
        .create_position_ids_from_input_ids(torch.from_numpy(ids), padding_idx=1).numpy()
    got = np.asarray(roberta.position_ids_from_input_ids(jnp.asarray(ids), 1))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[0], [2, 3, 4, 5, 1, 1])


# ------------------------------------------------------------------------------------ 2. training


def mlm_targets(batch, seed: int = 0):
    """HF labels [B, L] (-100 = not predicted) at ~30% of real tokens, and the same targets in
    jaxtl's gathered layout (positions, labels, weights padded to P with one spare slot)."""
    rng = np.random.RandomState(seed)
    chosen = (rng.rand(*batch["input_ids"].shape) < 0.3) & (batch["attention_mask"] == 1)
    chosen[:, 1] = True
    labels_BxL = np.where(chosen, batch["input_ids"], -100)
    rows = [np.nonzero(r)[0] for r in chosen]
    B, P = len(rows), max(len(r) for r in rows) + 1
    positions, labels, weights = (np.zeros((B, P), np.int32) for _ in range(3))
    for b, r in enumerate(rows):
        positions[b, : len(r)], labels[b, : len(r)], weights[b, : len(r)] = r, labels_BxL[b, r], 1
    gathered = {"masked_positions": positions, "masked_labels": labels,
                "masked_weights": weights.astype(np.float32), "example_weight": np.ones(B, np.float32)}
    return labels_BxL, gathered


def test_masked_lm_loss_and_grads(make_case):
    """MLM loss (no NSP) and every weight's gradient, tied decoder included, match HF."""
    case = make_case("roberta")
    batch, hf_model = case["batch"], case["models"]["pretraining"]
    labels_BxL, gathered = mlm_targets(batch)
    hf_model.zero_grad()
    ref = hf_model(**torch_inputs(batch), labels=torch.from_numpy(labels_BxL))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["root"] / "pretraining", head="pretraining")
    jbatch = {k: jnp.asarray(v) for k, v in {**batch, **gathered}.items()}

    def loss_fn(p):
        outputs = steps.PRETRAINING_MLM_ONLY.forward(model.apply, p, jbatch, deterministic=True)
        return steps.PRETRAINING_MLM_ONLY.loss(outputs, jbatch)[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert_close(loss, ref.loss.item(), FORWARD_TOL, "roberta mlm loss")
    assert_grads_close(jax_grads_as_hf(grads), hf_grads(hf_model), "roberta mlm grads")


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_classification_loss_and_grads(make_case, model_type):
    """Cross-entropy (3 labels, roberta) or MSE (1 label, xlm-roberta) and every gradient."""
    case = make_case(model_type)
    batch, hf_model = case["batch"], case["models"]["classification"]
    if hf_model.config.num_labels == 1:
        labels = np.array([0.5, -1.25, 2.0], np.float32)
    else:
        labels = np.array([0, 2, 1])
    hf_model.zero_grad()
    ref = hf_model(**torch_inputs(batch), labels=torch.from_numpy(labels))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["root"] / "classification", head="classification")
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    jbatch["labels"] = jnp.asarray(labels)
    jbatch["example_weight"] = jnp.ones(len(labels), jnp.float32)

    def loss_fn(p):
        outputs = steps.CLASSIFICATION.forward(model.apply, p, jbatch, deterministic=True)
        return steps.classification_loss(outputs["logits"], jbatch)[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    kind = "mse" if hf_model.config.num_labels == 1 else "ce"
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{model_type} classification {kind} loss")
    assert_grads_close(jax_grads_as_hf(grads), hf_grads(hf_model), f"{model_type} classification grads")


# ------------------------------------------------------------------------------------ 3. export


@pytest.mark.parametrize("model_type,head", [
    ("roberta", "pretraining"), ("roberta", "classification"), ("roberta", None),
    ("xlm-roberta", "pretraining"), ("camembert", "classification"),
])
def test_round_trip_through_export(make_case, tmp_path, model_type, head):
    """HF -> jaxtl -> jaxtl.hf.save -> the matching transformers class: the same numbers; the
    model_type, architecture, special token ids and labels are written back."""
    case = make_case(model_type)
    batch, source = case["batch"], case["root"] / str(head)
    model, params = jaxtl.hf.load(source, head=head)
    out_dir = jaxtl.hf.save(model, params, tmp_path / "export")

    written = json.loads((out_dir / "config.json").read_text())
    assert written["model_type"] == model_type
    assert written["architectures"] == [hf_class(model_type, head).__name__]
    original = case["models"][head].config
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "type_vocab_size",
                "layer_norm_eps", "hidden_act", "max_position_embeddings"):
        assert written[key] == getattr(original, key), key
    assert jaxtl.hf.head_of_folder(out_dir) == head
    stored = load_file(str(out_dir / "model.safetensors"))
    assert not any(name.startswith("lm_head.decoder") for name in stored)  # tied, as HF saves

    reloaded = transformers.AutoModel.from_pretrained(str(out_dir)) if head is None else \
        hf_class(model_type, head).from_pretrained(str(out_dir))
    assert type(reloaded) is hf_class(model_type, head)
    reloaded.eval()
    key = {None: "last_hidden_state", "pretraining": "logits", "classification": "logits"}[head]
    jax_key = {None: "last_hidden_state", "pretraining": "mlm_logits", "classification": "logits"}[head]
    with torch.no_grad():
        got = getattr(reloaded(**torch_inputs(batch)), key)
        want = getattr(case["models"][head](**torch_inputs(batch)), key)
    assert_close(got, want, 1e-6, f"export {model_type} {head} {key} (hf reloaded vs hf)")
    assert_close(jax_apply(model, params, batch)[jax_key], got, FORWARD_TOL,
                 f"export {model_type} {head} (jaxtl vs hf reloaded)")
    if head == "classification":
        assert reloaded.config.id2label == original.id2label


# ------------------------------------------------------------------------------------ 4. layouts


@pytest.fixture
def jaxtl_log(caplog):
    caplog.set_level(logging.INFO, logger="jaxtl")
    return caplog


def logged(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_sharded_safetensors_and_pytorch_bin(make_case, tmp_path):
    """Sharded safetensors, and a pytorch_model.bin state dict (with the tied decoder copies)."""
    case = make_case("roberta")
    hf_model, batch = case["models"]["pretraining"], case["batch"]
    with torch.no_grad():
        want = hf_model(**torch_inputs(batch)).logits
    sharded = tmp_path / "sharded"
    hf_model.save_pretrained(str(sharded), max_shard_size="20KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    state = hf_model.state_dict()
    assert "lm_head.decoder.weight" in state and "lm_head.decoder.bias" in state
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "config.json").write_text((case["root"] / "pretraining" / "config.json").read_text())
    torch.save(state, bin_folder / "pytorch_model.bin")
    for folder in (sharded, bin_folder):
        model, params = jaxtl.hf.load(folder, head="pretraining")
        assert_close(jax_apply(model, params, batch)["mlm_logits"], want, FORWARD_TOL,
                     f"{folder.name} mlm_logits")


def test_bare_checkpoint_into_heads(make_case, jaxtl_log):
    """A RobertaModel checkpoint (no ``roberta.`` prefix, with a pooler) under each head: the
    trunk loads, the head weights are named as new, the unused pooler as not used."""
    case = make_case("roberta")
    folder = case["root"] / "None"
    stored = load_file(str(folder / "model.safetensors"))
    assert "embeddings.word_embeddings.weight" in stored and "pooler.dense.weight" in stored
    with torch.no_grad():
        want = case["models"][None](**torch_inputs(case["batch"])).last_hidden_state
    trunk_model = roberta.RobertaModel
    for head, new in [
        ("pretraining", ["lm_head.bias", "lm_head.dense.weight", "lm_head.layer_norm.weight"]),
        ("classification", ["classifier.dense.weight", "classifier.out_proj.weight",
                            "classifier.out_proj.bias"]),
    ]:
        jaxtl_log.clear()
        model, params = jaxtl.hf.load(folder, head=head)
        [new_line] = logged(jaxtl_log, "newly initialised")
        for name in new:
            assert name in new_line, f"{name} not named in {new_line!r}"
        assert "roberta.encoder" not in new_line
        [unused_line] = logged(jaxtl_log, "not used")
        assert "roberta.pooler.dense.weight" in unused_line
        bare = {"roberta": {**params["roberta"], "pooler": {"dense": {
            "kernel": stored["pooler.dense.weight"].T, "bias": stored["pooler.dense.bias"]}}}}
        got = jax_apply(trunk_model(model.config), bare, case["batch"])["last_hidden_state"]
        assert_close(got, want, FORWARD_TOL, f"RobertaModel checkpoint -> {head} trunk")


def test_head_checkpoint_into_bare_model(make_case, jaxtl_log):
    """A classification checkpoint (no pooler) as a bare RobertaModel: the pooler is newly
    initialised and named, the classifier dropped and named."""
    case = make_case("roberta")
    model, params = jaxtl.hf.load(case["root"] / "classification", head=None)
    [new_line] = logged(jaxtl_log, "newly initialised")
    assert "roberta.pooler.dense.weight" in new_line
    [unused_line] = logged(jaxtl_log, "not used")
    assert "classifier.out_proj.weight" in unused_line
    with torch.no_grad():
        want = case["models"]["classification"].roberta(**torch_inputs(case["batch"]))
    assert_close(jax_apply(model, params, case["batch"])["last_hidden_state"],
                 want.last_hidden_state, FORWARD_TOL, "classification checkpoint -> bare trunk")
    with pytest.raises(CheckpointError, match="pooler"):  # inference never runs a random pooler
        jaxtl.hf.load(case["root"] / "classification", head=None, new_heads=False)


def test_unsupported_configs_are_refused(make_case, tmp_path):
    """An untied LM decoder or relative positions: one ConfigError naming file and field."""
    case = make_case("roberta")
    source = json.loads((case["root"] / "pretraining" / "config.json").read_text())
    for field, value in [("tie_word_embeddings", False), ("position_embedding_type", "relative_key")]:
        folder = tmp_path / field
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**source, field: value}))
        with pytest.raises(ConfigError, match=f"config.json: {field}="):
            jaxtl.hf.load_config(folder)
    model, params = jaxtl.hf.load(case["root"] / "pretraining", head="pretraining")
    too_long = jnp.full((1, TINY["max_position_embeddings"] - 1), 7)  # 22 tokens fit, not 23
    with pytest.raises(ConfigError, match="exceeds the 22 tokens"):
        model.apply({"params": params}, too_long)


# ------------------------------------------------------------------------------------ 5. sharding


# Masked LM: its tied decoder is where XLA once partitioned a backward pass wrongly (see
# bert.tied_decoder); the classification trunk is BERT's, covered by tests/test_sharding.py.
@pytest.mark.parametrize("head", ["pretraining"])
def test_two_steps_on_2x2x2_mesh_match_one_device(head):
    """Two Adam steps on data x fsdp x tensor = 2x2x2 give the losses, metrics and parameters
    of one device."""
    config = roberta.RobertaConfig(**{**TINY, "max_position_embeddings": 40}, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, labels=("a", "b", "c"))
    model = families.build(config, head)
    task = steps.PRETRAINING_MLM_ONLY if head == "pretraining" else steps.CLASSIFICATION
    rng = np.random.default_rng(0)
    B, L = 16, 16
    lengths = rng.integers(6, L + 1, B)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    batch = {"input_ids": np.where(mask == 1, rng.integers(5, VOCAB_SIZE, (B, L)), 1).astype(np.int32),
             "attention_mask": mask, "token_type_ids": np.zeros((B, L), np.int32),
             "example_weight": np.ones(B, np.float32)}
    if head == "classification":
        batch["labels"] = rng.integers(0, 3, B).astype(np.int32)
    else:
        batch["masked_positions"] = np.stack(
            [rng.choice(np.arange(1, n), 4, replace=False) for n in lengths]).astype(np.int32)
        batch["masked_labels"] = rng.integers(5, VOCAB_SIZE, (B, 4)).astype(np.int32)
        batch["masked_weights"] = np.tile(np.array([1, 1, 1, 0], np.float32), (B, 1))
    params = jax.device_get(jaxtl.hf.init_params(model, jax.random.key(0)))
    pretrained = traverse_util.flatten_dict(params)
    results = {}
    for name, shape in {"1x1x1": (1, 1, 1), "2x2x2": (2, 2, 2)}.items():
        mesh_cfg = MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2])
        mesh = sharding.make_mesh(mesh_cfg, devices=jax.devices()[: int(np.prod(shape))])
        rules = sharding.rules_from_config(mesh_cfg)
        tx, _ = optim.make_optimizer(OptimConfig(lr=1e-3, schedule="constant", warmup_steps=0),
                                     params, total_steps=2, num_layers=config.num_hidden_layers)
        state, shardings = sharding.create_train_state(model, tx, mesh, rules, rng=jax.random.key(0),
                                                       pretrained=pretrained)
        run = sharding.compile_step(steps.make_train_step(task), mesh, rules, shardings)
        global_batch = sharding.global_batch(batch, mesh)
        metrics = []
        with sharding.activate(mesh, rules):
            # XLA's CPU optimisations off halve the compile time; the partitioning is unchanged.
            step = run.jitted.lower(state, global_batch, jax.random.key(1)).compile(
                compiler_options={"xla_backend_optimization_level": 0})
            for _ in range(2):
                state, m = step(state, global_batch, jax.random.key(1))
                metrics.append(steps.summarize(jax.device_get(m)))
        results[name] = (metrics, jax.device_get(state.params))
    (ref_metrics, ref_params), (got_metrics, got_params) = results["1x1x1"], results["2x2x2"]
    for ref, got in zip(ref_metrics, got_metrics):
        assert ref.keys() == got.keys()
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, err_msg=key)
    flat_ref, flat_got = traverse_util.flatten_dict(ref_params), traverse_util.flatten_dict(got_params)
    num = sum(np.sum((np.asarray(flat_got[k], np.float64) - flat_ref[k]) ** 2) for k in flat_ref)
    den = sum(np.sum(np.asarray(v, np.float64) ** 2) for v in flat_ref.values())
    print(f"PARITY {head} 2x2x2 vs 1x1x1: losses {[m['loss'] for m in got_metrics]}, "
          f"params rel L2 {np.sqrt(num / den):.1e}")
    assert np.sqrt(num / den) <= 1e-5


# ------------------------------------------------------------------------------------ 6. CLI


SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
CORPUS_WORDS = (
    "the a movie film story plot actor acting very really so one time day night good great love "
    "fun best bad awful boring hate worst it was is and of to in king queen lord man woman"
).split()


def write_bpe_tokenizer(folder: Path):
    """A tiny byte-level BPE RobertaTokenizer saved to ``folder`` and reloaded as users do.

    Vocabulary: the 5 special tokens (``<pad>`` = 1), the 256 byte symbols (so any text encodes
    without ``<unk>``), then one merge chain per word of :data:`CORPUS_WORDS` and
    helpers.NEUTRAL_WORDS (``Ġ`` + word: ``Ġ t`` -> ``Ġt``, ``Ġt h`` -> ``Ġth``, ...), so a word
    after a space is one token.
    """
    from tokenizers import pre_tokenizers

    vocab = SPECIAL_TOKENS + sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = []
    for word in CORPUS_WORDS:
        piece = "Ġ"
        for char in word:
            merge = (piece, char)
            piece += char
            if merge not in merges:
                merges.append(merge)
                vocab.append(piece)
    tok = transformers.RobertaTokenizer(vocab={w: i for i, w in enumerate(vocab)},
                                        merges=merges)
    tok.model_max_length = 512
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def cli_assets(tmp_path_factory):
    """A tiny RobertaForMaskedLM checkpoint with its BPE tokenizer, sentiment CSVs, a corpus."""
    root = tmp_path_factory.mktemp("roberta-cli")
    tok = write_bpe_tokenizer(root / "tokenizer")
    assert tok.pad_token_id == 1 and tok.mask_token_id == 4 and tok.cls_token_id == 0
    assert tok.unk_token_id not in tok(" the movie was very good")["input_ids"]
    config = transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    ckpt = root / "ckpt"
    transformers.RobertaForMaskedLM(config).save_pretrained(str(ckpt))
    tok.save_pretrained(str(ckpt))
    rows = sentiment_rows(240, seed=1)
    corpus = root / "corpus.txt"
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(CORPUS_WORDS, rng.integers(6, 14))) + "." for _ in range(200)]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"ckpt": ckpt, "tok": tok, "corpus": str(corpus),
            "train": write_csv(root / "train.csv", ["sentence", "label"], rows[:192]),
            "valid": write_csv(root / "valid.csv", ["sentence", "label"], rows[192:])}


def write_config(path: Path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_cli_finetune_roberta(cli_assets, tmp_path):
    """`jaxtl finetune` on the tiny RoBERTa: the loss goes down; the export is a
    RobertaForSequenceClassification that computes jaxtl's logits."""
    config = write_config(tmp_path / "c.yaml", {
        "task": "finetune",
        # Dropout off: the tiny model learns in fewer steps (measured on the same data in a plain
        # loop, the BPE-tokenized rows learn more slowly than WordPiece ones).
        "model": {"pretrained": str(cli_assets["ckpt"]), "hidden_dropout_prob": 0.0,
                  "attention_probs_dropout_prob": 0.0},
        "data": {"train_file": cli_assets["train"], "validation_file": cli_assets["valid"],
                 "max_seq_length": 32, "bucket_sizes": [16, 32]},
        "optim": {"lr": 5e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "epochs": 4, "log_every": 8, "eval_every": 48, "seed": 0,
                  "progress": False, "tensorboard": False},
    })
    workdir = tmp_path / "run"
    assert cli.main(["finetune", "--config", config, "--workdir", str(workdir)]) == 0
    train_losses = [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]
    print(f"PARITY finetune train losses {train_losses}")
    assert train_losses[-1] < 0.7 * train_losses[0], train_losses

    final = workdir / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == [
        "RobertaForSequenceClassification"]
    hf_model = transformers.RobertaForSequenceClassification.from_pretrained(final).eval()
    tok = transformers.AutoTokenizer.from_pretrained(final)
    enc = tok(["the movie was very good", "a boring film"], padding=True, return_tensors="np")
    model, params = jaxtl.hf.load(final, head="classification")
    got = model.apply({"params": params}, jnp.asarray(enc["input_ids"]),
                      jnp.asarray(enc["attention_mask"]))["logits"]
    with torch.no_grad():
        want = hf_model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits
    assert (enc["input_ids"] == tok.pad_token_id).any()
    assert_close(got, want, FORWARD_TOL, "fine-tuned export logits")


def pretrain_config(path: Path, cli_assets, **data) -> str:
    return write_config(path, {
        "task": "pretrain",
        "model": {"pretrained": str(cli_assets["ckpt"])},
        "data": {"train_files": [cli_assets["corpus"]], "max_seq_length": 32,
                 "validation_fraction": 0.0, **data},
        "optim": {"lr": 5e-3, "warmup_ratio": 0.1},
        "train": {"batch_size": 16, "max_steps": 24, "log_every": 4, "seed": 0,
                  "progress": False, "tensorboard": False},
    })


def test_cli_pretrain_roberta_mlm(cli_assets, tmp_path):
    """`jaxtl pretrain` with data.nsp: false continues the tiny RobertaForMaskedLM: the MLM loss
    goes down and the export loads as RobertaForMaskedLM."""
    config = pretrain_config(tmp_path / "c.yaml", cli_assets, nsp=False)
    workdir = tmp_path / "run"
    assert cli.main(["pretrain", "--config", config, "--workdir", str(workdir)]) == 0
    records = [r for r in read_metrics(workdir) if r["split"] == "train"]
    losses = [r["mlm_loss"] for r in records]
    print(f"PARITY pretrain mlm losses {losses}")
    assert losses[-1] < 0.8 * losses[0], losses
    assert all("nsp_accuracy" not in r for r in records)
    final = workdir / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["RobertaForMaskedLM"]
    transformers.RobertaForMaskedLM.from_pretrained(final)


def test_cli_pretrain_with_nsp_is_refused(cli_assets, tmp_path):
    """RoBERTa has no next-sentence head: data.nsp: true is one clear error, no traceback."""
    config = pretrain_config(tmp_path / "c.yaml", cli_assets, nsp=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtl.cli", "pretrain", "--config", config,
         "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "data.nsp" in proc.stderr and "roberta" in proc.stderr, proc.stderr


def test_cli_sequence_longer_than_positions_is_refused(cli_assets, tmp_path):
    """66 positions with pad id 1 hold 64 tokens: data.max_seq_length 65 passes the data check
    (which reads max_position_embeddings) but the model refuses it with one clear line."""
    config = write_config(tmp_path / "c.yaml", {
        "task": "finetune", "model": {"pretrained": str(cli_assets["ckpt"])},
        "data": {"train_file": cli_assets["train"], "max_seq_length": 65, "bucket_sizes": [65]},
        "train": {"batch_size": 16, "max_steps": 1, "progress": False, "tensorboard": False},
    })
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtl.cli", "finetune", "--config", config,
         "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "sequence length 65 exceeds the 64 tokens" in proc.stderr
    assert "data.max_seq_length to 64" in proc.stderr


def test_from_scratch_roberta_takes_the_tokenizers_pad_id(tmp_path):
    """A from-scratch RoBERTa (model.family: roberta) counts positions around the tokenizer's pad
    id (0 for this WordPiece tokenizer), not RoBERTa's default 1."""
    from helpers import make_tokenizer

    from jaxtl import config as config_lib, tasks

    tok = make_tokenizer(tmp_path)
    assert tok.pad_token_id == 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the movie was good.\nit was a bad film.\n\nthe king and the queen.\n")
    path = write_config(tmp_path / "c.yaml", {
        "task": "pretrain",
        "model": {"family": "roberta", "size": "base", "tokenizer": str(tmp_path / "tokenizer"),
                  "overrides": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                                "intermediate_size": 64, "max_position_embeddings": 34}},
        "data": {"train_files": [str(corpus)], "max_seq_length": 32, "nsp": False,
                 "validation_fraction": 0.0},
        "train": {"batch_size": 8, "max_steps": 1, "progress": False, "tensorboard": False},
    })
    setup = tasks.setup_for(config_lib.load(path))
    assert isinstance(setup.model, roberta.RobertaForMaskedLM)
    assert setup.model.config.pad_token_id == 0
    assert setup.model.config.vocab_size == len(tok)
