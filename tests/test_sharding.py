"""Sharded training on 8 faked CPU devices: every mesh computes the same training run.

* A few fine-tuning and pretraining steps (dropout off) on meshes data x fsdp x tensor = 1x1x1
  (one device), 8x1x1, 2x4x1, 2x2x2 and 1x2x4 give the same losses and parameters;
* parameters and their Adam moments sit where the logical rules put them (counters replicated);
* ``jax.pmap`` (and ``jax.shard_map``) with ``make_train_step(task, axis_name="batch")`` gives
  the same run as jit;
* a checkpoint saved on data=8 restores onto fsdp=4 x tensor=2 and training continues identically;
* impossible meshes and batches are refused with a clear ConfigError;
* remat and bf16 compute (fp32 parameters) run sharded.

Every run starts from the same host parameters (initialised on one device; that
``create_train_state`` initialises identically on a mesh is checked once, on 2x2x2) and is
compiled once with XLA's CPU backend optimisations off (half the compile time; the partitioning,
which is what these tests check, is unchanged).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.jax_utils
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from flax.training.train_state import TrainState
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtl import checkpoint, hf, optim, sharding, steps
from jaxtl.config import MeshConfig, OptimConfig, load as load_config
from jaxtl.families import build, head_of
from jaxtl.errors import ConfigError
from jaxtl.families.bert import BertConfig

NUM_DEVICES = 8
MESHES = {  # name -> (data, fsdp, tensor)
    "1x1x1": (1, 1, 1),
    "8x1x1": (8, 1, 1),
    "2x4x1": (2, 4, 1),
    "2x2x2": (2, 2, 2),
    "1x2x4": (1, 2, 4),
}
NUM_STEPS = 3
GLOBAL_BATCH, SEQ_LEN, NUM_MASKED = 16, 16, 4  # NUM_MASKED <= 4 is what once broke 2x2x2 (heads.py)
RTOL = 1e-5  # losses and the parameters as a whole
LEAF_RTOL = 1e-4  # any one parameter (see assert_same_run)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
RNG = jax.random.key(1)  # dropout is off: the step must not depend on it anyway


@pytest.fixture(autouse=True, scope="module")
def _eight_devices():
    assert jax.device_count() == NUM_DEVICES, "tests/conftest.py fakes 8 CPU devices"


def tiny_config(vocab_size: int, **overrides) -> BertConfig:
    """hidden 32, 2 layers, 4 heads, MLP 64, dropout off (exact comparisons)."""
    kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)
    return BertConfig(**(kw | overrides))


def make_batches(task: steps.Task, vocab_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """NUM_STEPS global batches with padded rows of varied length.

    Every example counts (example_weight 1) and every row has 3 real masked positions of 4, so
    each pmap device (2 rows) holds the same number of examples and masked tokens: only then is
    the pmean of per-device mean gradients the global mean gradient.
    """
    rng = np.random.default_rng(seed)
    B, L, Pm = GLOBAL_BATCH, SEQ_LEN, NUM_MASKED
    batches = []
    for _ in range(NUM_STEPS):
        lengths = rng.integers(8, L + 1, B)
        mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(5, vocab_size, (B, L)).astype(np.int32) * mask
        ids[:, 0] = 2  # [CLS]
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": ((np.arange(L)[None] >= lengths[:, None] // 2) * mask).astype(np.int32),
            "example_weight": np.ones(B, np.float32),
        }
        if task is steps.CLASSIFICATION:
            batch["labels"] = rng.integers(0, 3, B).astype(np.int32)
        else:
            batch["masked_positions"] = np.stack(
                [rng.choice(np.arange(1, n), Pm, replace=False) for n in lengths]).astype(np.int32)
            batch["masked_labels"] = rng.integers(5, vocab_size, (B, Pm)).astype(np.int32)
            batch["masked_weights"] = np.tile(np.array([1, 1, 1, 0], np.float32), (B, 1))
            batch["nsp_labels"] = rng.integers(0, 2, B).astype(np.int32)
        batches.append(batch)
    return batches


@dataclasses.dataclass
class Case:
    """One model + optimizer + data, trained identically on every mesh."""

    task: steps.Task
    model: nn.Module
    tx: optax.GradientTransformation
    host_state: TrainState  # numpy leaves: the same starting point for every mesh
    batches: list

    @classmethod
    def build(cls, task: steps.Task, config: BertConfig) -> "Case":
        model = build(config, "classification" if task is steps.CLASSIFICATION else "pretraining")
        params = hf.init_params(model, jax.random.key(0))
        # Clipping (a global norm over all shards), decay masks and Adam: the real optimizer.
        tx, _ = optim.make_optimizer(
            OptimConfig(lr=1e-3, schedule="constant", warmup_steps=0, max_grad_norm=1.0),
            params, total_steps=NUM_STEPS, num_layers=config.num_hidden_layers,
        )
        state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
        state = jax.device_get(state.replace(step=jnp.zeros((), jnp.int32)))
        return cls(task, model, tx, state, make_batches(task, config.vocab_size))


CASES = {
    # vocab 96 divides every tensor size; 98 does not divide 4, so on tensor=4 the vocabulary
    # dimension falls back to replicated (sharding._fit_spec).
    "classification": lambda: Case.build(steps.CLASSIFICATION, tiny_config(96, labels=("a", "b", "c"))),
    "pretraining": lambda: Case.build(steps.PRETRAINING, tiny_config(98)),
}


@functools.cache
def case(name: str) -> Case:
    return CASES[name]()


def make_mesh(shape: tuple[int, int, int]):
    data, fsdp, tensor = shape
    devices = jax.devices()[: data * fsdp * tensor]
    return sharding.make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor), devices=devices)


def state_shardings(c: Case, mesh, rules=sharding.DEFAULT_RULES) -> TrainState:
    """What create_train_state returns as shardings, without compiling an initialiser."""
    with sharding.activate(mesh, rules):
        boxed = jax.eval_shape(sharding.model_init_fn(c.model), jax.random.key(0))
    p_shardings = sharding.param_shardings(boxed, mesh, rules)
    o_shardings = sharding.opt_state_shardings(c.tx, nn.unbox(boxed), p_shardings, mesh)
    return c.host_state.replace(step=sharding.replicated(mesh), params=p_shardings, opt_state=o_shardings)


def compile_train_step(c: Case, mesh, shardings, state, batch, rules=sharding.DEFAULT_RULES):
    """``sharding.compile_step``'s jitted step, lowered with its rules and compiled (fast)."""
    run = sharding.compile_step(steps.make_train_step(c.task), mesh, rules, shardings)
    with sharding.activate(mesh, rules):
        return run.jitted.lower(state, batch, RNG).compile(compiler_options=FAST_COMPILE)


@dataclasses.dataclass
class Run:
    losses: list[float]
    params: dict  # host arrays after the last step
    state: TrainState  # device arrays after the last step (sharded)
    shardings: TrainState
    step: object  # the compiled step, reusable with this mesh's shardings


@functools.cache
def train_on_mesh(case_name: str, mesh_name: str, **config_changes) -> Run:
    c = case(case_name)
    if config_changes:  # the same parameters, computed another way (remat, bf16)
        model = build(c.model.config.replace(**config_changes), head_of(c.model))
        c = dataclasses.replace(c, model=model, host_state=c.host_state.replace(apply_fn=model.apply))
    mesh = make_mesh(MESHES[mesh_name])
    shardings = state_shardings(c, mesh)
    state = jax.device_put(c.host_state, shardings)
    batches = [sharding.global_batch(b, mesh) for b in c.batches]
    step = compile_train_step(c, mesh, shardings, state, batches[0])
    losses = []
    for batch in batches:
        state, metrics = step(state, batch, RNG)
        losses.append(steps.summarize(jax.device_get(metrics))["loss"])
    return Run(losses, jax.device_get(state.params), state, shardings, step)


# The attention key bias has a zero true gradient (softmax ignores a shift shared by all keys):
# its value is Adam-scaled rounding noise, different under any change of summation order.
ZERO_GRADIENT = ("key", "bias")


def _flat(a: dict, b: dict):
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys()
    keys = [k for k in fa if k[-2:] != ZERO_GRADIENT]
    return [("/".join(k), np.asarray(fa[k], np.float64), np.asarray(fb[k], np.float64)) for k in keys]


def relative_diff(a: dict, b: dict) -> float:
    """``||a - b|| / ||a||`` over all parameters together (L2), key biases left out."""
    pairs = _flat(a, b)
    return float(np.sqrt(sum(np.sum((x - y) ** 2) for _, x, y in pairs) / sum(np.sum(x**2) for _, x, _ in pairs)))


def relative_diffs(a: dict, b: dict) -> dict[str, float]:
    """``||a - b|| / ||a||`` per parameter (L2), key biases left out."""
    return {name: float(np.linalg.norm(x - y) / np.linalg.norm(x)) for name, x, y in _flat(a, b)}


def max_relative_diff(a: dict, b: dict) -> tuple[float, str]:
    """The largest per-parameter relative difference and which parameter it is."""
    return max((v, k) for k, v in relative_diffs(a, b).items())


def assert_same_run(losses, params, ref_losses, ref_params, what: str):
    """Losses and all parameters within RTOL, and no single parameter beyond LEAF_RTOL.

    Per parameter the bar is looser: biases start at zero, so after a few steps they are a few
    learning rates large, and an element whose gradient is ~0 can get an Adam step of either sign
    from rounding; that is a few 1e-6 of such a small vector. A wrong gradient is ~1e-1 there.
    """
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, err_msg=f"{what}: losses")
    overall = relative_diff(ref_params, params)
    assert overall <= RTOL, f"{what}: parameters differ by {overall:.2e} (relative L2)"
    worst, where = max_relative_diff(ref_params, params)
    assert worst <= LEAF_RTOL, f"{what}: parameter {where} differs by {worst:.2e} (relative L2)"


# -------------------------------------------------------------------------------------------
# The same numbers on every mesh


@pytest.mark.parametrize("case_name", ["classification", "pretraining"])
def test_every_mesh_trains_identically(case_name):
    ref = train_on_mesh(case_name, "1x1x1")
    # It trains at all: every parameter moved far more than the tolerance.
    moved = relative_diffs(ref.params, case(case_name).host_state.params)
    assert min(moved.values()) > 100 * RTOL, min((v, k) for k, v in moved.items())
    report = {}
    for mesh_name in MESHES:
        if mesh_name == "1x1x1":
            continue
        run = train_on_mesh(case_name, mesh_name)
        assert_same_run(run.losses, run.params, ref.losses, ref.params, f"{case_name} on {mesh_name}")
        loss_diff = max(abs(a - b) / abs(b) for a, b in zip(run.losses, ref.losses))
        report[mesh_name] = (loss_diff, relative_diff(ref.params, run.params),
                             max_relative_diff(ref.params, run.params)[0])
        # The state stays where the shardings say (out_shardings), step after step.
        flat = traverse_util.flatten_dict(run.state.params)
        flat_sh = traverse_util.flatten_dict(run.shardings.params)
        for path, array in flat.items():
            assert array.sharding.is_equivalent_to(flat_sh[path], array.ndim), path
    print(f"\n{case_name} vs one device (loss, all parameters, worst parameter): "
          + "; ".join(f"{k} {a:.1e} {b:.1e} {c:.1e}" for k, (a, b, c) in report.items()))


def test_vocab_not_divisible_by_tensor_falls_back_to_replicated():
    run = train_on_mesh("pretraining", "1x2x4")  # vocab 98 over tensor=4
    params = run.state.params
    assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].sharding.spec == P(None, "fsdp")
    assert params["cls"]["predictions"]["bias"].sharding.spec == P(None)
    # ... while the parts tensor=4 divides are still split.
    query = params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
    assert query.sharding.spec == P("fsdp", "tensor")
    run = train_on_mesh("pretraining", "2x2x2")  # 98 is divisible by tensor=2
    word = run.state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert word.sharding.spec == P("tensor", "fsdp")


# -------------------------------------------------------------------------------------------
# Where each parameter and its optimizer state live


EXPECTED_2x2x2 = {  # parameter path -> PartitionSpec on data=2 x fsdp=2 x tensor=2
    "bert/embeddings/word_embeddings/embedding": P("tensor", "fsdp"),
    "bert/embeddings/position_embeddings/embedding": P(None, "fsdp"),
    "bert/embeddings/LayerNorm/scale": P("fsdp"),
    "bert/encoder/layer/0/attention/self/query/kernel": P("fsdp", "tensor"),
    "bert/encoder/layer/0/attention/self/query/bias": P("tensor"),
    "bert/encoder/layer/0/attention/self/value/kernel": P("fsdp", "tensor"),
    "bert/encoder/layer/0/attention/output/dense/kernel": P("tensor", "fsdp"),
    "bert/encoder/layer/0/attention/output/LayerNorm/bias": P("fsdp"),
    "bert/encoder/layer/1/intermediate/dense/kernel": P("fsdp", "tensor"),
    "bert/encoder/layer/1/intermediate/dense/bias": P("tensor"),
    "bert/encoder/layer/1/output/dense/kernel": P("tensor", "fsdp"),
    "bert/encoder/layer/1/output/dense/bias": P("fsdp"),
    "bert/pooler/dense/kernel": P("fsdp", "tensor"),
    "classifier/kernel": P("fsdp", None),
    "classifier/bias": P(None),
}


def _specs_equal(sharding_: NamedSharding, spec: P, ndim: int) -> bool:
    return sharding_.is_equivalent_to(NamedSharding(sharding_.mesh, spec), ndim)


def test_create_train_state_places_params_and_adam_moments_by_the_rules():
    c = case("classification")
    mesh = make_mesh(MESHES["2x2x2"])
    state, shardings = sharding.create_train_state(
        c.model, c.tx, mesh, sharding.DEFAULT_RULES, rng=jax.random.key(0))
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(state.params).items()}
    for path, spec in EXPECTED_2x2x2.items():
        assert _specs_equal(flat[path].sharding, spec, flat[path].ndim), (path, flat[path].sharding.spec)
        if any(spec):  # really split: each device holds a slice, not the whole array
            shard = flat[path].addressable_shards[0].data
            assert shard.size < flat[path].size, path
    # Initialisation is sharding-independent (a partitionable PRNG): the same as one device.
    jax.tree.map(np.testing.assert_array_equal, c.host_state.params, jax.device_get(state.params))

    # Adam's mu and nu mirror their parameter's sharding; counters are replicated over all 8
    # devices (a plain jax.jit(tx.init) would have put everything on device 0).
    adams = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert adams, "no Adam state found"
    for adam in adams:
        for moments in (adam.mu, adam.nu):
            for path, leaf in traverse_util.flatten_dict(moments).items():
                param = state.params
                for key in path:
                    param = param[key]
                assert leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim), path
                assert len(leaf.sharding.device_set) == NUM_DEVICES, path
        assert adam.count.sharding.is_fully_replicated and len(adam.count.sharding.device_set) == NUM_DEVICES
    assert state.step.sharding.is_fully_replicated and len(state.step.sharding.device_set) == NUM_DEVICES
    # The shardings returned are the ones the arrays have (what compile_step and restore use).
    for array, target in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
        assert array.sharding.is_equivalent_to(target, array.ndim)


def test_create_train_state_initialises_only_the_leaves_pretrained_lacks():
    """A fine-tuning start: the pretrained leaves are the arrays given (placed by the rules), and
    the new head's leaves are exactly what a full ``model.init`` gives them, although the jit
    that makes them returns (and so computes) only those."""
    c = case("classification")
    mesh = make_mesh(MESHES["2x2x2"])
    full = traverse_util.flatten_dict(c.host_state.params)
    pretrained = {path: np.asarray(v) + 1.0 for path, v in full.items() if path[0] != "classifier"}
    assert 0 < len(pretrained) < len(full)
    state, shardings = sharding.create_train_state(
        c.model, c.tx, mesh, sharding.DEFAULT_RULES, rng=jax.random.key(0), pretrained=pretrained)
    got = traverse_util.flatten_dict(jax.device_get(state.params))
    assert set(got) == set(full)
    for path, value in full.items():
        np.testing.assert_array_equal(got[path], pretrained.get(path, value), err_msg=str(path))
    flat_sh = traverse_util.flatten_dict(shardings.params)
    for path, leaf in traverse_util.flatten_dict(state.params).items():
        assert leaf.sharding.is_equivalent_to(flat_sh[path], leaf.ndim), path


# -------------------------------------------------------------------------------------------
# pmap: the same step functions, the old way


@pytest.mark.parametrize("case_name", ["classification", "pretraining"])
def test_pmap_matches_jit(case_name):
    """Per device the loss is the local mean; ``pmean`` of the gradients is the global mean
    gradient only because every device holds the same number of examples (and masked tokens)."""
    c = case(case_name)
    devices = jax.devices()
    n = len(devices)
    p_step = jax.pmap(steps.make_train_step(c.task, axis_name="batch"), axis_name="batch",
                      donate_argnums=(0,))
    state = flax.jax_utils.replicate(c.host_state, devices)
    rngs = flax.jax_utils.replicate(jax.random.key_data(RNG), devices)
    local_batches = [{k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}
                     for batch in c.batches]  # [devices, B / devices, ...]
    p_step = p_step.lower(state, local_batches[0], rngs).compile(compiler_options=FAST_COMPILE)
    losses = []
    for local in local_batches:
        state, metrics = p_step(state, local, rngs)
        # Metric sums were psum-ed: every device holds the global totals.
        totals = jax.device_get(metrics)
        np.testing.assert_array_equal(totals["count"], np.full(n, GLOBAL_BATCH))
        losses.append(steps.summarize(jax.tree.map(lambda x: x[0], totals))["loss"])
    params = jax.device_get(jax.tree.map(lambda x: x[0], state.params))
    ref = train_on_mesh(case_name, "8x1x1")
    assert_same_run(losses, params, ref.losses, ref.params, f"{case_name} pmap vs jit")


def test_shard_map_without_vma_checks_matches_jit():
    """The same pmap-style step under ``jax.shard_map(..., check_vma=False)`` (see
    ``make_train_step``: with vma checks on, JAX itself sums the replicated parameters' gradient
    over the axis and the step's pmean would leave it 8x the mean)."""
    c = case("classification")
    mesh = jax.make_mesh((NUM_DEVICES,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    step = jax.jit(jax.shard_map(
        steps.make_train_step(c.task, axis_name="batch"), mesh=mesh,
        in_specs=(P(), P("batch"), P()), out_specs=(P(), P()), check_vma=False))
    step = step.lower(c.host_state, c.batches[0], RNG).compile(compiler_options=FAST_COMPILE)
    state, losses = c.host_state, []
    for batch in c.batches:
        state, metrics = step(state, batch, RNG)
        losses.append(steps.summarize(jax.device_get(metrics))["loss"])
    ref = train_on_mesh("classification", "8x1x1")
    assert_same_run(losses, jax.device_get(state.params), ref.losses, ref.params, "shard_map vs jit")


# -------------------------------------------------------------------------------------------
# Checkpoint on one mesh, resume on another


def test_checkpoint_saved_on_data8_restores_onto_fsdp4_tensor2(tmp_path):
    c = case("classification")
    mesh_a, mesh_b = make_mesh((8, 1, 1)), make_mesh((1, 4, 2))
    sh_a, sh_b = state_shardings(c, mesh_a), state_shardings(c, mesh_b)
    state_a = jax.device_put(c.host_state, sh_a)
    step_a = train_on_mesh("classification", "8x1x1").step  # compiled for sh_a
    state_a, _ = step_a(state_a, sharding.global_batch(c.batches[0], mesh_a), RNG)

    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", async_save=False)
    ckpt.save(1, state_a, {"step": 1})
    ckpt.wait()
    restored = checkpoint.Checkpointer(tmp_path / "ckpt").restore(
        checkpoint.abstract_with_shardings(state_a, sh_b))
    assert restored is not None
    state_b, meta, saved_step = restored
    assert saved_step == 1 and meta["step"] == 1
    for array, target in zip(jax.tree.leaves(state_b), jax.tree.leaves(sh_b)):
        assert array.sharding.is_equivalent_to(target, array.ndim)
        assert array.sharding.mesh.shape == mesh_b.shape
    kernel = state_b.params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    state_b = state_b.replace(apply_fn=c.model.apply, tx=c.tx)

    step_b = compile_train_step(c, mesh_b, sh_b, state_b, sharding.global_batch(c.batches[1], mesh_b))
    losses_a, losses_b = [], []
    for batch in c.batches[1:]:
        state_a, m_a = step_a(state_a, sharding.global_batch(batch, mesh_a), RNG)
        state_b, m_b = step_b(state_b, sharding.global_batch(batch, mesh_b), RNG)
        losses_a.append(steps.summarize(jax.device_get(m_a))["loss"])
        losses_b.append(steps.summarize(jax.device_get(m_b))["loss"])
    assert int(state_b.step) == NUM_STEPS
    assert_same_run(losses_b, jax.device_get(state_b.params), losses_a, jax.device_get(state_a.params),
                    "restored onto fsdp=4 x tensor=2")
    # ... and equal the uninterrupted run on one device.
    ref = train_on_mesh("classification", "1x1x1")
    np.testing.assert_allclose(losses_b, ref.losses[1:], rtol=RTOL)


# -------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    "mesh, message",
    [
        (MeshConfig(data=3), "mesh data=3 x fsdp=1 x tensor=1 = 3 devices, but 8 are available"),
        (MeshConfig(data=2, fsdp=2, tensor=1), "= 4 devices, but 8 are available"),
        (MeshConfig(data=-1, tensor=3), "8 devices are not divisible by 3"),
    ],
)
def test_mesh_that_does_not_use_the_devices_is_refused(mesh, message):
    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh(mesh)


def test_tensor_axis_must_divide_heads_and_mlp():
    mesh = make_mesh((1, 1, 8))
    with pytest.raises(ConfigError, match=r"mesh.tensor=8 does not divide num_attention_heads=4"):
        sharding.check_model_fits(mesh, tiny_config(96))
    with pytest.raises(ConfigError, match=r"mesh.tensor=8 does not divide intermediate_size=36"):
        sharding.check_model_fits(mesh, tiny_config(96, num_attention_heads=8, intermediate_size=36))
    sharding.check_model_fits(make_mesh((2, 2, 2)), tiny_config(96))  # fits: no error


def test_batch_must_split_over_data_times_fsdp():
    mesh = make_mesh((2, 4, 1))
    with pytest.raises(ConfigError, match=r"train.batch_size=12 is not divisible by the batch shards "
                                          r"data x fsdp = 8"):
        sharding.check_batch_fits(mesh, 12)
    with pytest.raises(ConfigError, match=r"train.eval_batch_size=4 .* data x fsdp = 8"):
        sharding.check_batch_fits(mesh, 4, "train.eval_batch_size")
    sharding.check_batch_fits(make_mesh((1, 2, 4)), 2)  # tensor does not split the batch


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mesh.data=-1", "mesh.fsdp=-1"], "only one of mesh.data, mesh.fsdp, mesh.tensor may be -1"),
        (["mesh.tensor=0"], "mesh.tensor=0 must be positive or -1"),
    ],
)
def test_bad_mesh_config_is_refused_on_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.train_file=x.csv", "model.pretrained=x", *overrides])


def test_bad_rules_are_refused():
    with pytest.raises(ConfigError, match="mesh.rules: unknown logical axis 'hidden'"):
        sharding.rules_from_config(MeshConfig(rules={"hidden": "fsdp"}))
    with pytest.raises(ConfigError, match=r"mesh.rules.vocab: 'model' is not a mesh axis"):
        sharding.rules_from_config(MeshConfig(rules={"vocab": "model"}))
    rules = dict(sharding.rules_from_config(MeshConfig(rules={"vocab": None, "batch": ["data"]})))
    assert rules["vocab"] is None and rules["batch"] == "data" and rules["heads"] == "tensor"


# -------------------------------------------------------------------------------------------
# remat and bf16, sharded


def test_remat_gives_the_same_training_run():
    plain = train_on_mesh("classification", "2x2x2")
    remat = train_on_mesh("classification", "2x2x2", remat=True)
    assert_same_run(remat.losses, remat.params, plain.losses, plain.params, "remat on 2x2x2")
    # ... because the layers really are rematerialised (a test comparing a run with itself
    # would pass too): the gradient's jaxpr recomputes each encoder layer (one remat each).
    c = case("classification")
    params = c.host_state.params
    batch = c.batches[0]

    def remat_eqns(model) -> int:
        def loss(p):
            return c.task.loss(c.task.forward(model.apply, p, batch, deterministic=True), batch)[0]
        jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
        return sum(eqn.primitive.name.startswith(("remat", "checkpoint")) for eqn in jaxpr.eqns)

    remat_model = build(c.model.config.replace(remat=True), "classification")
    assert remat_eqns(remat_model) == c.model.config.num_hidden_layers
    assert remat_eqns(c.model) == 0


def test_bf16_compute_runs_sharded_and_keeps_fp32_params():
    c = case("classification")
    bf16 = build(c.model.config.replace(dtype="bfloat16"), "classification")
    logits = jax.eval_shape(lambda p: bf16.apply({"params": p}, c.batches[0]["input_ids"])["logits"],
                            c.host_state.params)
    assert logits.dtype == jnp.bfloat16  # the compute really is bf16 ...
    run = train_on_mesh("classification", "2x2x2", dtype="bfloat16")
    fp32 = train_on_mesh("classification", "2x2x2")
    for leaf in jax.tree.leaves(run.state.params) + jax.tree.leaves(run.state.opt_state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32  # ... the parameters and Adam moments fp32
    assert all(np.isfinite(run.losses))
    np.testing.assert_allclose(run.losses, fp32.losses, rtol=3e-2)
    assert run.losses != fp32.losses
    word = run.state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert word.sharding.spec == P("tensor", "fsdp")


@pytest.mark.parametrize("mesh_name", ["8x1x1", "2x2x2"])
def test_dropout_masks_do_not_depend_on_the_mesh(mesh_name):
    """With dropout on, every mesh draws the same masks: ``layers.keep_mask`` counts over the
    global element index, so each shard hashes its own slice of the one global mask."""
    on = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    ref = train_on_mesh("classification", "1x1x1", **on)
    assert ref.losses != train_on_mesh("classification", "1x1x1").losses  # dropout acted
    run = train_on_mesh("classification", mesh_name, **on)
    assert_same_run(run.losses, run.params, ref.losses, ref.params, f"dropout on {mesh_name}")
