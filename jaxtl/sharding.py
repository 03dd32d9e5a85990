"""Device meshes, logical-axis rules, and sharded train state — from one CPU to a pod.

The mesh has three axes: ``data`` (batch split, parameters replicated), ``fsdp`` (batch split and
parameters split along ``embed``), ``tensor`` (heads / MLP / vocabulary split). Parameters and key
activations carry logical axis names (see :mod:`jaxtl.families.layers`); ``rules`` map them to mesh axes.

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    state, shardings = create_train_state(model, tx, mesh, rules, rng=key)
    train_step = compile_step(jaxtl.steps.classification_train_step, mesh, rules, shardings)
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from flax import traverse_util
from flax.training.train_state import TrainState
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxtl.config import MeshConfig
from jaxtl.errors import ConfigError

log = logging.getLogger("jaxtl")

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# logical axis -> mesh axes
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes with -1 resolved; refuses a mesh that does not use exactly ``num_devices``."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"mesh {dict(zip(AXES, sizes))}: {num_devices} devices are not divisible by {known}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
            f"devices, but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices (of all processes), Auto axis types."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(cfg, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def rules_from_config(cfg: MeshConfig) -> tuple[tuple[str, Any], ...]:
    if not cfg.rules:
        return DEFAULT_RULES
    known = {name for name, _ in DEFAULT_RULES}
    rules = dict(DEFAULT_RULES)
    for name, target in cfg.rules.items():
        if name not in known:
            raise ConfigError(f"mesh.rules: unknown logical axis {name!r}; known: {sorted(known)}")
        targets = [target] if isinstance(target, str) or target is None else list(target)
        for t in targets:
            if t is not None and t not in AXES:
                raise ConfigError(f"mesh.rules.{name}: {t!r} is not a mesh axis ({', '.join(AXES)})")
        rules[name] = tuple(targets) if len(targets) > 1 else targets[0]
    return tuple(rules.items())


def check_model_fits(mesh: Mesh, config) -> None:
    """Refuse a tensor axis that does not divide the attention heads / MLP width."""
    tensor = mesh.shape["tensor"]
    if config.num_attention_heads % tensor:
        raise ConfigError(
            f"mesh.tensor={tensor} does not divide num_attention_heads={config.num_attention_heads}"
        )
    if config.intermediate_size % tensor:
        raise ConfigError(
            f"mesh.tensor={tensor} does not divide intermediate_size={config.intermediate_size}"
        )


def check_batch_fits(mesh: Mesh, global_batch: int, name: str = "train.batch_size") -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % shards:
        raise ConfigError(
            f"{name}={global_batch} is not divisible by the batch shards data x fsdp = {shards}"
        )
    if global_batch % jax.process_count():
        raise ConfigError(f"{name}={global_batch} is not divisible by {jax.process_count()} processes")


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
    """Mesh and logical rules in force, so activation constraints in the model take effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide (e.g. vocab 30522 over tensor=4)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        fitted.append(axes if size == 1 or dim % size == 0 else None)
    return P(*fitted)


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules) -> Any:
    """NamedSharding per parameter from the logical names in a (boxed) abstract param tree."""
    specs = nn.get_partition_spec(boxed_abstract)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.unbox(boxed_abstract)
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, _fit_spec(spec, x.shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, P),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def opt_state_shardings(tx, abstract_params: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """Optimizer state sharded like the parameters it mirrors; counters replicated."""
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    return _like_params(tx, abstract_state, params_shardings, mesh)


def _like_params(tx, abstract_state, params_shardings, mesh):
    import optax
    from optax.transforms import MaskedNode

    repl = replicated(mesh)
    # Masked/multi_transform states hold MaskedNode where a group has no state: keep those.
    return optax.tree_map_params(
        tx,
        lambda leaf, sharding: leaf if isinstance(leaf, MaskedNode) else sharding,
        abstract_state,
        params_shardings,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, (NamedSharding, MaskedNode)),
    )


def model_init_fn(model: nn.Module, seq_len: int = 8) -> Callable[[jax.Array], Any]:
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return lambda rng: model.init(rng, ids)["params"]


def abstract_params(model: nn.Module, seq_len: int = 8) -> Any:
    """Shapes and dtypes of the model's parameters (unboxed), without computing anything."""
    shapes = jax.eval_shape(model_init_fn(model, seq_len), jax.random.key(0))
    return nn.unbox(shapes)


def put_global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array (the same on every process) as a global array with ``sharding``."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def create_train_state(
    model: nn.Module,
    tx,
    mesh: Mesh,
    rules,
    *,
    rng: jax.Array,
    pretrained: dict[tuple[str, ...], np.ndarray] | None = None,
) -> tuple[TrainState, TrainState]:
    """A TrainState created sharded from the start, and the matching tree of shardings.

    ``pretrained`` (flat path -> host array, from :func:`jaxtl.hf.convert_state_dict`) is placed
    shard by shard; the leaves it lacks (a new head) are initialised under
    ``jax.jit(init, out_shardings=...)``, never whole on one device. That jit returns only those
    leaves, so XLA drops the rest of the model's initialisation: their values are the ones a
    full ``model.init`` gives, at the cost of a head's init instead of the whole model's
    (MiniLM: 1.1 s cold / 0.8 s warm instead of 5.6 / 1.6-1.9 s, ``bench/bench_train_state.py``;
    BERT-base: no 110M random draws to throw away). The optimizer state is created with
    ``out_shardings`` mirroring the parameters.
    """
    init = model_init_fn(model)
    with activate(mesh, rules):
        boxed = jax.eval_shape(init, rng)
    p_shardings = param_shardings(boxed, mesh, rules)
    flat_sh = traverse_util.flatten_dict(p_shardings)
    pretrained = pretrained or {}
    missing = {path: sh for path, sh in flat_sh.items() if path not in pretrained}
    flat = {}
    if missing:
        def init_missing(r):
            every = traverse_util.flatten_dict(nn.unbox(init(r)))
            return {path: every[path] for path in missing}

        with activate(mesh, rules):
            flat = jax.jit(init_missing, out_shardings=missing)(rng)
    for path, value in pretrained.items():
        flat[path] = put_global(value, flat_sh[path])
    params = traverse_util.unflatten_dict(flat)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    o_shardings = opt_state_shardings(tx, abstract_params, p_shardings, mesh)
    opt_state = jax.jit(tx.init, out_shardings=o_shardings)(params)
    state = TrainState(step=0, apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state)
    state = state.replace(step=put_global(np.zeros((), np.int32), replicated(mesh)))
    shardings = state.replace(step=replicated(mesh), params=p_shardings, opt_state=o_shardings)
    return state, shardings


def compile_step(step_fn, mesh: Mesh, rules, state_shardings, *, donate: bool = True, train: bool = True):
    """The one place that jits a step: shardings in and out, state donated, rules in force.

    Train steps have the signature ``(state, batch, rng) -> (state, metrics)``; eval steps
    ``(state, batch) -> (metrics, outputs)``.
    """
    data = batch_sharding(mesh)
    repl = replicated(mesh)
    if train:
        jitted = jax.jit(
            step_fn,
            in_shardings=(state_shardings, data, repl),
            out_shardings=(state_shardings, repl),
            donate_argnums=(0,) if donate else (),
        )
    else:
        jitted = jax.jit(step_fn, in_shardings=(state_shardings, data), out_shardings=(repl, data))

    def run(*args):
        with activate(mesh, rules):
            return jitted(*args)

    run.jitted = jitted
    return run


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> one global array per key, split over data x fsdp."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in local.items()
    }
