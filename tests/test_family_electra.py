"""ELECTRA against Hugging Face PyTorch: outputs, losses, gradients, export, layouts, mesh, CLI.

Every reference number comes from ``transformers`` (fp32, ``model.eval()``), never from jaxtl.
The tiny models get unit-scale random weights (``test_hf_parity.randomize``) and the tolerances
of tests/test_hf_parity.py: forward ``max|jaxtl - hf| <= 1e-5 * max(1, max|hf|)``, gradients of
every weight within 1e-4 relative (floored at 1e-2 of the largest gradient: the attention key
biases' true gradient is zero).

Two configurations: "project" (embedding_size 24 < hidden 32, so ``electra.embeddings_project``
exists; exact GELU; 3 token types; LayerNorm eps 1e-7; 3 labels) and "same" (embedding_size ==
hidden, no projection; tanh GELU as hidden_act, which the classification head must NOT use: HF
hard-codes exact GELU there; eps 1e-3; one label, regression).

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
from helpers import make_tokenizer, read_metrics, sentiment_rows, write_csv
import flax.linen as nn
from flax import traverse_util
from flax.training.train_state import TrainState
from safetensors.numpy import load_file
from test_hf_parity import (
    FORWARD_TOL,
    TINY,
    assert_close,
    assert_grads_close,
    hf_grads,
    jax_apply,
    jax_grads_as_hf,
    randomize,
    tiny_batch,
    torch_inputs,
    write_tokenizer,
)

import jaxtl.hf
from jaxtl import cli, families, optim, sharding, steps
from jaxtl.config import MeshConfig, OptimConfig
from jaxtl.errors import ConfigError
from jaxtl.families import electra

REPO = Path(__file__).resolve().parents[1]
FAST_COMPILE = {"xla_backend_optimization_level": 0}
RNG = jax.random.key(1)

CONFIGS = {
    "project": dict(embedding_size=24, hidden_act="gelu", type_vocab_size=3, layer_norm_eps=1e-7,
                    num_labels=3),
    "same": dict(embedding_size=32, hidden_act="gelu_new", layer_norm_eps=1e-3, num_labels=1),
}
HF_CLASSES = {
    None: transformers.ElectraModel,
    "pretraining": transformers.ElectraForPreTraining,
    "classification": transformers.ElectraForSequenceClassification,
}


def hf_config(name: str, **changes) -> transformers.ElectraConfig:
    return transformers.ElectraConfig(**{**TINY, **CONFIGS[name], **changes})


@pytest.fixture(scope="module")
def make_case(tmp_path_factory):
    """``make_case(name)``: random HF discriminator (``ElectraForPreTraining``) and
    classification models of one config, saved with a tokenizer; memoised."""
    cases = {}

    def make(name: str) -> dict:
        if name not in cases:
            root = tmp_path_factory.mktemp(f"electra-{name}")
            torch.manual_seed(0)
            pretraining = randomize(transformers.ElectraForPreTraining(hf_config(name)), seed=1)
            pretraining.save_pretrained(str(root / "pretraining"))
            labels = {i: f"label_{chr(ord('a') + i)}" for i in range(CONFIGS[name]["num_labels"])}
            config = hf_config(name, id2label=labels, label2id={v: k for k, v in labels.items()})
            torch.manual_seed(0)
            classification = randomize(transformers.ElectraForSequenceClassification(config), seed=2)
            classification.save_pretrained(str(root / "classification"))
            for folder in ("pretraining", "classification"):
                write_tokenizer(root / folder)
            cases[name] = {
                "name": name, "root": root, "pretraining": pretraining,
                "classification": classification,
                "batch": odd_batch(CONFIGS[name].get("type_vocab_size", 2)),
            }
        return cases[name]

    return make


def odd_batch(type_vocab_size: int) -> dict[str, np.ndarray]:
    """Three rows of 13 (odd sizes): test_hf_parity's padded rows and pairs, one more column."""
    batch = tiny_batch(type_vocab_size)
    out = {k: np.pad(v[:3], ((0, 0), (0, 1))) for k, v in batch.items()}
    out["input_ids"][0, 12] = 7  # the full row stays full
    out["attention_mask"][0, 12] = 1
    out["token_type_ids"][0, 12] = 1
    if type_vocab_size > 2:
        out["token_type_ids"][2, 3:5] = 2
    return out


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, make_case):
    return make_case(request.param)


# ------------------------------------------------------------------------------------ forward


def test_forward_parity(case):
    """Trunk, discriminator and classifier outputs match HF on padded batches and pairs."""
    name, batch = case["name"], case["batch"]
    hf_pre, hf_cls = case["pretraining"], case["classification"]
    assert hasattr(hf_pre.electra, "embeddings_project") == (name == "project")
    with torch.no_grad():
        ref_trunk = hf_pre.electra(**torch_inputs(batch))
        ref_pre = hf_pre(**torch_inputs(batch))
        ref_cls = hf_cls(**torch_inputs(batch))

    for head, folder, checks in [
        (None, "pretraining", [("last_hidden_state", ref_trunk.last_hidden_state)]),
        ("pretraining", "pretraining", [("logits", ref_pre.logits)]),
        ("classification", "classification", [("logits", ref_cls.logits)]),
    ]:
        model, params = jaxtl.hf.load(case["root"] / folder, head=head)
        assert isinstance(model.config, electra.ElectraConfig)
        assert ("embeddings_project" in params["electra"]) == (name == "project")
        out = jax_apply(model, params, batch)
        assert tuple(out) == {None: ("last_hidden_state",), "classification": ("logits",),
                              "pretraining": families.get("electra").pretraining_outputs}[head]
        for key, want in checks:
            assert_close(out[key], want, FORWARD_TOL, f"{name} {head} {key}")
    assert out["logits"].shape == (3, CONFIGS[name]["num_labels"])


def test_packed_rows_and_position_ids(make_case):
    """A [B, L, L] block-diagonal mask with restarting positions computes each packed sequence
    as HF computes it alone."""
    case = make_case("project")
    hf_model = case["pretraining"]
    rng = np.random.RandomState(3)
    first, second = rng.randint(5, 64, (1, 6)), rng.randint(5, 64, (1, 5))
    packed = np.concatenate([first, second], axis=1)
    segment = np.array([0] * 6 + [1] * 5)
    mask = (segment[:, None] == segment[None, :]).astype(np.int64)[None]
    positions = np.concatenate([np.arange(6), np.arange(5)])[None]
    model, params = jaxtl.hf.load(case["root"] / "pretraining", head="pretraining")
    out = model.apply({"params": params}, jnp.asarray(packed), jnp.asarray(mask),
                      jnp.zeros_like(packed), position_ids=jnp.asarray(positions))["logits"]
    with torch.no_grad():
        want = [hf_model(input_ids=torch.from_numpy(ids)).logits.numpy() for ids in (first, second)]
    assert_close(out, np.concatenate(want, axis=1), FORWARD_TOL, "packed rows logits")


def test_shared_token_classification_head(make_case, tmp_path):
    """jaxtl's shared token-classification head on the ELECTRA trunk (FamilySpec.trunk_module)
    computes HF ElectraForTokenClassification's logits."""
    case = make_case("project")
    torch.manual_seed(0)
    hf_model = randomize(transformers.ElectraForTokenClassification(hf_config("project")), seed=5)
    hf_model.save_pretrained(str(tmp_path / "token"))
    assert jaxtl.hf.head_of_folder(tmp_path / "token") == "token_classification"
    model, params = jaxtl.hf.load(tmp_path / "token", head="token_classification", new_heads=False)
    with torch.no_grad():
        want = hf_model(**torch_inputs(case["batch"])).logits
    assert_close(jax_apply(model, params, case["batch"])["logits"], want, FORWARD_TOL,
                 "token classification logits")


# ------------------------------------------------------------------------------------ training


def test_replaced_token_detection_loss_and_grads(make_case):
    """Sigmoid BCE over real tokens and every weight's gradient match HF's ElectraForPreTraining
    with ``labels``; a padding row (example_weight 0) changes nothing."""
    case = make_case("project")
    batch, hf_model = case["batch"], case["pretraining"]
    replaced = (np.random.RandomState(4).rand(*batch["input_ids"].shape) < 0.3).astype(np.int64)
    hf_model.zero_grad()
    ref = hf_model(**torch_inputs(batch), labels=torch.from_numpy(replaced))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["root"] / "pretraining", head="pretraining")
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    jbatch["replaced_labels"] = jnp.asarray(replaced)
    jbatch["example_weight"] = jnp.ones(3, jnp.float32)
    # The same batch plus a padding row full of replaced tokens: it must not count.
    padded = {k: jnp.concatenate([v, v[:1]]) for k, v in jbatch.items()}
    padded["replaced_labels"] = padded["replaced_labels"].at[3].set(1)
    padded["example_weight"] = padded["example_weight"].at[3].set(0.0)

    def loss_fn(p, b):
        outputs = steps.REPLACED_TOKEN_DETECTION.forward(model.apply, p, b, deterministic=True)
        return steps.REPLACED_TOKEN_DETECTION.loss(outputs, b)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, jbatch)
    assert_close(loss, ref.loss.item(), FORWARD_TOL, "rtd loss")
    assert_grads_close(jax_grads_as_hf(grads), hf_grads(hf_model), "rtd grads")
    assert float(metrics["rtd_count"]) == batch["attention_mask"].sum()
    summary = steps.summarize(jax.device_get(metrics))
    assert summary["loss"] == pytest.approx(ref.loss.item(), rel=1e-5)
    hf_correct = ((ref.logits.detach().numpy() > 0) == replaced)[batch["attention_mask"] == 1]
    assert summary["rtd_accuracy"] == pytest.approx(hf_correct.mean())
    padded_loss, _ = jax.jit(loss_fn)(params, padded)
    assert_close(padded_loss, ref.loss.item(), FORWARD_TOL, "rtd loss with a padding row")


@pytest.mark.parametrize("name", ["project", "same"])
def test_classification_loss_and_grads(make_case, name):
    """Cross-entropy (3 labels) or MSE (1 label) and every weight's gradient match HF."""
    case = make_case(name)
    batch, hf_model = case["batch"], case["classification"]
    if CONFIGS[name]["num_labels"] == 1:
        labels = np.array([0.5, -1.25, 2.0], np.float32)
    else:
        labels = np.array([0, 2, 1])
    hf_model.zero_grad()
    ref = hf_model(**torch_inputs(batch), labels=torch.from_numpy(labels))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["root"] / "classification", head="classification")
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    jbatch["labels"] = jnp.asarray(labels)
    jbatch["example_weight"] = jnp.ones(3, jnp.float32)

    def loss_fn(p):
        outputs = steps.CLASSIFICATION.forward(model.apply, p, jbatch, deterministic=True)
        return steps.classification_loss(outputs["logits"], jbatch)[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{name} classification loss")
    assert_grads_close(jax_grads_as_hf(grads), hf_grads(hf_model), f"{name} classification grads")


# ------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("head", ["pretraining", "classification", None])
def test_round_trip_through_export(make_case, tmp_path, head):
    """HF -> jaxtl -> jaxtl.hf.save -> transformers: same numbers, labels and tokenizer kept."""
    case = make_case("project")
    batch = case["batch"]
    source = case["root"] / ("classification" if head == "classification" else "pretraining")
    tok = jaxtl.hf.tokenizer(source)
    model, params = jaxtl.hf.load(source, head=head)
    out_dir = jaxtl.hf.save(model, params, tmp_path / "export", tokenizer=tok)
    hf_config_written = json.loads((out_dir / "config.json").read_text())
    assert hf_config_written["model_type"] == "electra"
    assert hf_config_written["embedding_size"] == 24

    reloaded = (transformers.AutoModel if head is None else HF_CLASSES[head]).from_pretrained(
        str(out_dir)).eval()
    assert type(reloaded) is HF_CLASSES[head]
    jax_out = jax_apply(model, params, batch)
    key = "last_hidden_state" if head is None else "logits"
    with torch.no_grad():
        got = getattr(reloaded(**torch_inputs(batch)), key)
        reference = case["classification"] if head == "classification" else case["pretraining"]
        want = getattr((reference.electra if head is None else reference)(**torch_inputs(batch)), key)
    assert_close(got, want, 1e-6, f"export {head} {key} (hf reloaded vs hf)")
    assert_close(jax_out[key], got, FORWARD_TOL, f"export {head} {key} (jaxtl vs hf reloaded)")
    assert jaxtl.hf.tokenizer(out_dir)("the cat sat")["input_ids"] == tok("the cat sat")["input_ids"]
    if head == "classification":
        assert reloaded.config.id2label == {0: "label_a", 1: "label_b", 2: "label_c"}


# ------------------------------------------------------------------------------------ layouts


def test_sharded_safetensors_and_pytorch_bin(make_case, tmp_path):
    case = make_case("project")
    hf_model, batch = case["classification"], case["batch"]
    with torch.no_grad():
        want = hf_model(**torch_inputs(batch)).logits
    sharded, bin_folder = tmp_path / "sharded", tmp_path / "bin"
    hf_model.save_pretrained(str(sharded), max_shard_size="20KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    # transformers 5 writes only safetensors (safe_serialization is gone): a .bin as older
    # versions wrote it is the torch.save of the state dict beside the config.
    hf_model.config.save_pretrained(str(bin_folder))
    torch.save(hf_model.state_dict(), bin_folder / "pytorch_model.bin")
    for folder in (sharded, bin_folder):
        model, params = jaxtl.hf.load(folder, head="classification")
        assert_close(jax_apply(model, params, batch)["logits"], want, FORWARD_TOL,
                     f"{folder.name} logits")


@pytest.fixture
def jaxtl_log(caplog):
    caplog.set_level(logging.INFO, logger="jaxtl")
    return caplog


def log_line(caplog, text: str) -> str:
    lines = [r.getMessage() for r in caplog.records if text in r.getMessage()]
    assert len(lines) == 1, caplog.text
    return lines[0]


def assert_trunk_matches(params, config, hf_trunk, batch, what):
    """The ``electra`` subtree of any jaxtl model computes what HF's ElectraModel does."""
    out = jax_apply(electra.ElectraModel(config), {"electra": params["electra"]}, batch)
    with torch.no_grad():
        want = hf_trunk(**torch_inputs(batch)).last_hidden_state
    assert_close(out["last_hidden_state"], want, FORWARD_TOL, what)


def test_discriminator_checkpoint_into_classification(make_case, jaxtl_log):
    """The usual hub ELECTRA (an ElectraForPreTraining discriminator) fine-tunes: its
    discriminator head is dropped (named), the classifier is new (named), the trunk is kept."""
    case = make_case("project")
    model, params = jaxtl.hf.load(case["root"] / "pretraining", head="classification", num_labels=2)
    dropped = log_line(jaxtl_log, "not used")
    assert "discriminator_predictions.dense.weight" in dropped
    assert "discriminator_predictions.dense_prediction.weight" in dropped
    new = log_line(jaxtl_log, "newly initialised")
    for name in ("classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                 "classifier.out_proj.bias"):
        assert name in new
    assert "electra." not in new
    assert_trunk_matches(params, model.config, case["pretraining"].electra, case["batch"],
                         "discriminator -> classification trunk")


def test_bare_and_generator_checkpoints_into_heads(make_case, tmp_path, jaxtl_log):
    """An ElectraModel checkpoint (no ``electra.`` prefix) loads under both heads (named as new);
    a generator (ElectraForMaskedLM) loads for classification, its LM head dropped (named)."""
    case = make_case("same")
    bare = tmp_path / "bare"
    case["pretraining"].electra.save_pretrained(str(bare))
    stored = load_file(str(bare / "model.safetensors"))
    assert "embeddings.word_embeddings.weight" in stored
    assert not any(name.startswith("electra.") for name in stored)
    for head, new_names in [
        ("pretraining", ["discriminator_predictions.dense.weight",
                         "discriminator_predictions.dense_prediction.bias"]),
        ("classification", ["classifier.dense.weight", "classifier.out_proj.weight"]),
    ]:
        jaxtl_log.clear()
        model, params = jaxtl.hf.load(bare, head=head)
        new = log_line(jaxtl_log, "newly initialised")
        assert all(name in new for name in new_names), new
        assert_trunk_matches(params, model.config, case["pretraining"].electra, case["batch"],
                             f"ElectraModel checkpoint -> {head} trunk")

    generator = tmp_path / "generator"
    torch.manual_seed(0)
    hf_generator = randomize(transformers.ElectraForMaskedLM(hf_config("same")), seed=3)
    hf_generator.save_pretrained(str(generator))
    jaxtl_log.clear()
    model, params = jaxtl.hf.load(generator, head="classification")
    assert "generator_predictions.dense.weight" in log_line(jaxtl_log, "not used")
    assert_trunk_matches(params, model.config, hf_generator.electra, case["batch"],
                         "generator -> classification trunk")


def test_config_fields(make_case):
    """HF defaults are ELECTRA-small's; unsupported fields are refused naming the file."""
    default = electra.ElectraConfig.from_hf({"model_type": "electra"})
    hf_default = transformers.ElectraConfig()
    for field in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps"):
        assert getattr(default, field) == getattr(hf_default, field), field
    assert families.get("electra").preset("base").embedding_size == 768
    with pytest.raises(ConfigError, match=r"c\.json: position_embedding_type='relative_key'"):
        electra.ElectraConfig.from_hf({"position_embedding_type": "relative_key"}, source="c.json")
    # embeddings and their projection are depth 0 (optim.freeze "embeddings", LLRD)
    assert electra.layer_depth(("electra", "embeddings_project", "kernel"), 2) == 0
    assert electra.layer_depth(("electra", "encoder", "layer", "1", "output", "dense", "kernel"), 2) == 2
    assert electra.layer_depth(("classifier", "out_proj", "kernel"), 2) == 3


# ------------------------------------------------------------------------------------ mesh


@pytest.mark.parametrize("head", ["classification", "pretraining"])
def test_one_step_on_2x2x2_mesh_matches_one_device(make_case, head):
    """One training step (dropout off) on data x fsdp x tensor = 2x2x2 gives one device's loss,
    metrics and parameters."""
    case = make_case("project")
    folder = case["root"] / ("classification" if head == "classification" else "pretraining")
    model, params = jaxtl.hf.load(folder, head=head, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    task = steps.CLASSIFICATION if head == "classification" else steps.REPLACED_TOKEN_DETECTION
    rng = np.random.default_rng(0)
    B, L = 8, 16
    lengths = rng.integers(6, L + 1, B)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    batch = {"input_ids": rng.integers(5, 64, (B, L)).astype(np.int32) * mask,
             "attention_mask": mask, "token_type_ids": np.zeros((B, L), np.int32),
             "example_weight": np.ones(B, np.float32), "labels": rng.integers(0, 3, B).astype(np.int32),
             "replaced_labels": (rng.random((B, L)) < 0.3).astype(np.int32)}
    tx, _ = optim.make_optimizer(OptimConfig(lr=1e-3, schedule="constant", warmup_steps=0),
                                 params, total_steps=1, num_layers=2)
    # One host state for both meshes, placed by the shardings create_train_state would give
    # (as tests/test_sharding.py does: no initialiser to compile per mesh).
    host_state = jax.device_get(TrainState.create(apply_fn=model.apply, params=params, tx=tx))
    host_state = host_state.replace(step=np.zeros((), np.int32))
    rules = sharding.DEFAULT_RULES
    results = {}
    for data, fsdp, tensor in [(1, 1, 1), (2, 2, 2)]:
        mesh = sharding.make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor),
                                  devices=jax.devices()[: data * fsdp * tensor])
        with sharding.activate(mesh, rules):
            boxed = jax.eval_shape(sharding.model_init_fn(model), jax.random.key(0))
        param_shardings = sharding.param_shardings(boxed, mesh, rules)
        shardings = host_state.replace(
            step=sharding.replicated(mesh), params=param_shardings,
            opt_state=sharding.opt_state_shardings(tx, nn.unbox(boxed), param_shardings, mesh))
        state = jax.device_put(host_state, shardings)
        run = sharding.compile_step(steps.make_train_step(task), mesh, rules, shardings)
        global_batch = sharding.global_batch(batch, mesh)
        with sharding.activate(mesh, rules):  # XLA's CPU optimisations off: half the compile
            step = run.jitted.lower(state, global_batch, RNG).compile(compiler_options=FAST_COMPILE)
            state, metrics = step(state, global_batch, RNG)
        shape = (data, fsdp, tensor)
        results[shape] = (steps.summarize(jax.device_get(metrics)), jax.device_get(state.params))
    (one, one_params), (mesh8, mesh8_params) = results[(1, 1, 1)], results[(2, 2, 2)]
    print(f"PARITY {head} 2x2x2 vs 1x1x1: {one} / {mesh8}")
    assert one.keys() == mesh8.keys()
    for key in one:
        assert mesh8[key] == pytest.approx(one[key], rel=1e-5), key
    # Parameters per weight in relative L2, as tests/test_sharding.py compares them (elementwise,
    # an Adam step of a near-zero gradient flips with rounding).
    flat_mesh = traverse_util.flatten_dict(mesh8_params)
    for path, value in traverse_util.flatten_dict(one_params).items():
        if path[-2:] == ("key", "bias"):
            continue  # zero true gradient: its Adam step is rounding noise (see test_sharding)
        diff = np.linalg.norm(flat_mesh[path] - value) / np.linalg.norm(value)
        assert diff <= 1e-4, f"{'/'.join(path)} differs by {diff:.2e} (relative L2)"


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli_assets(tmp_path_factory):
    """A tiny ELECTRA discriminator checkpoint (as hub ELECTRAs are) with a tokenizer, and CSVs."""
    root = tmp_path_factory.mktemp("electra-cli")
    tok = make_tokenizer(root)
    config = transformers.ElectraConfig(
        vocab_size=len(tok), embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    ckpt = root / "electra-discriminator"
    transformers.ElectraForPreTraining(config).save_pretrained(str(ckpt))
    tok.save_pretrained(str(ckpt))
    rows = sentiment_rows(160, seed=1)
    return {"root": root, "ckpt": ckpt,
            "train": write_csv(root / "train.csv", ["sentence", "label"], rows[:128]),
            "valid": write_csv(root / "valid.csv", ["sentence", "label"], rows[128:])}


def write_config(path: Path, cli_assets, task: str = "finetune") -> str:
    raw = {
        "task": task,
        "model": {"pretrained": str(cli_assets["ckpt"])},
        "data": {"train_file": cli_assets["train"], "validation_file": cli_assets["valid"],
                 "max_seq_length": 32, "bucket_sizes": [16, 32]},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.1},
        # 10 epochs: a tiny random encoder sits at chance for ~30 steps before it learns; after 6
        # epochs (48 steps) the last loss was 0.59-0.99 x the first over seeds 0-5, after 10
        # 0.01-0.20 x (bench/RESULTS.md §12).
        "train": {"batch_size": 16, "epochs": 10, "log_every": 4, "eval_every": 48, "seed": 0,
                  "progress": False, "tensorboard": False},
    }
    if task == "pretrain":
        raw["data"] = {"train_files": [cli_assets["train"]], "max_seq_length": 32, "nsp": False}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_finetune_cli_from_discriminator_checkpoint(cli_assets, tmp_path):
    """`jaxtl finetune` from an ElectraForPreTraining folder: the loss goes down and the export is
    an ElectraForSequenceClassification transformers loads, computing what jaxtl computes."""
    config = write_config(tmp_path / "c.yaml", cli_assets)
    workdir = tmp_path / "run"
    assert cli.main(["finetune", "--config", config, "--workdir", str(workdir)]) == 0
    losses = [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]
    print(f"ELECTRA finetune train losses: {losses}")
    assert losses[-1] < 0.5 * losses[0], losses

    final = workdir / "final"
    hf_model = transformers.ElectraForSequenceClassification.from_pretrained(final).eval()
    assert hf_model.config.id2label == {0: "negative", 1: "positive"}
    model, params = jaxtl.hf.load(final, head="classification", new_heads=False)
    tok = transformers.AutoTokenizer.from_pretrained(final)
    enc = tok(["good great movie", "awful boring film"], padding=True, return_tensors="np")
    batch = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        want = hf_model(**torch_inputs(batch)).logits
    assert_close(jax_apply(model, params, batch)["logits"], want, FORWARD_TOL, "finetuned export")


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    return subprocess.run([sys.executable, "-m", "jaxtl.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_refuses_pretrain_and_unsupported_config(cli_assets, tmp_path):
    """`jaxtl pretrain` on ELECTRA (no generator data in jaxtl) and a relative-position ELECTRA
    config are one clear error each: exit 2, the culprit named, no traceback."""
    config = write_config(tmp_path / "p.yaml", cli_assets, task="pretrain")
    done = run_cli("pretrain", "--config", config, "--workdir", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr
    assert "electra" in done.stderr and "ElectraForPreTraining" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

    folder = tmp_path / "relative"
    hf_model = transformers.ElectraModel(hf_config("project"))
    hf_model.save_pretrained(str(folder))
    config_file = folder / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "position_embedding_type": "relative_key"}))
    done = run_cli("convert", str(folder), str(tmp_path / "out"), "--head", "classification")
    assert done.returncode == 2, done.stderr
    assert str(config_file) in done.stderr and "relative_key" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
