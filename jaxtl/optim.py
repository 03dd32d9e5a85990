"""Optimizers from config: AdamW or LAMB, warmup + decay, no decay on biases/LayerNorm, clipping,
gradient accumulation, freezing, and layer-wise learning-rate decay — all optax.

    tx, schedule = make_optimizer(cfg.optim, params, total_steps=1000, num_layers=12)
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxtl import families
from jaxtl.config import OptimConfig
from jaxtl.errors import ConfigError


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``cfg.lr``, then linear/cosine decay (or constant) to the end."""
    total_steps = max(int(total_steps), 1)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    warmup = min(warmup, total_steps)
    end = cfg.lr * cfg.end_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_ratio)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def frozen_paths(freeze: list[str], params: Any, num_layers: int) -> set[tuple[str, ...]]:
    """Parameter paths held fixed by ``optim.freeze`` entries; an entry matching nothing is an error."""
    flat = traverse_util.flatten_dict(params)
    family = families.of_params(params)
    depth = lambda path: family.layer_depth(path, num_layers)  # noqa: E731
    frozen: set[tuple[str, ...]] = set()
    for spec in freeze:
        if spec == "embeddings":
            chosen = {p for p in flat if depth(p) == 0}
        elif spec == "trunk":
            chosen = {p for p in flat if p[0] == family.trunk}
        elif m := re.fullmatch(r"layers:(\d+)", spec):
            k = int(m.group(1))
            if k > num_layers:
                raise ConfigError(f"optim.freeze: {spec!r} but the model has {num_layers} layers")
            chosen = {p for p in flat if depth(p) <= k}
        else:
            prefix = tuple(spec.strip("/").split("/"))
            chosen = {p for p in flat if p[: len(prefix)] == prefix}
        if not chosen:
            raise ConfigError(
                f"optim.freeze: {spec!r} matches no parameter; use 'embeddings', 'layers:K', "
                "'trunk' or a parameter path prefix such as 'bert/pooler'"
            )
        frozen |= chosen
    return frozen


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: kernels and embeddings, not biases or LayerNorm scales."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({p: p[-1] not in ("bias", "scale") for p in flat})


def make_optimizer(
    cfg: OptimConfig, params: Any, *, total_steps: int, num_layers: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation for ``cfg`` over a parameter tree (arrays or shapes).

    ``total_steps`` counts optimizer updates (micro-batches / ``grad_accum_steps``).
    Frozen parameters get exactly zero updates and no optimizer state; with layer-wise decay
    each depth gets its own scaled schedule (an optax.multi_transform group).
    """
    schedule = make_schedule(cfg, total_steps)
    flat = traverse_util.flatten_dict(params)
    family = families.of_params(params)
    frozen = frozen_paths(list(cfg.freeze), params, num_layers)
    labels = {}
    for path in flat:
        if path in frozen:
            labels[path] = "frozen"
        elif cfg.layerwise_lr_decay < 1.0:
            labels[path] = f"depth_{family.layer_depth(path, num_layers)}"
        else:
            labels[path] = "train"
    labels_tree = traverse_util.unflatten_dict(labels)
    mask = decay_mask(params)

    def inner(scale: float) -> optax.GradientTransformation:
        lr = schedule if scale == 1.0 else (lambda step: schedule(step) * scale)
        if cfg.name == "lamb":
            return optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask)
        if cfg.name == "sgd":  # plain SGD (b1 as momentum when > 0), decoupled weight decay
            return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask),
                               optax.sgd(lr, momentum=cfg.b1 or None))
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask)

    groups: dict[str, optax.GradientTransformation] = {"frozen": optax.set_to_zero()}
    for label in set(labels.values()) - {"frozen"}:
        if label == "train":
            groups[label] = inner(1.0)
        else:
            depth = int(label.split("_")[1])
            groups[label] = inner(cfg.layerwise_lr_decay ** (num_layers + 1 - depth))
    chain = []
    if frozen:
        # Frozen gradients are zeroed before clipping so they do not count in the global norm.
        frozen_mask = traverse_util.unflatten_dict({p: p in frozen for p in flat})
        chain.append(optax.masked(optax.set_to_zero(), frozen_mask))
    if cfg.max_grad_norm is not None:
        chain.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    chain.append(optax.multi_transform(groups, labels_tree))
    tx = optax.chain(*chain)
    if cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
    return tx, schedule


def learning_rates(cfg: OptimConfig, params: Any, *, num_layers: int, step: int, total_steps: int) -> dict:
    """The learning rate each parameter path gets at ``step`` (for logs and tests)."""
    schedule = make_schedule(cfg, total_steps)
    frozen = frozen_paths(list(cfg.freeze), params, num_layers)
    family = families.of_params(params)
    rates = {}
    for path in traverse_util.flatten_dict(params):
        depth = family.layer_depth(path, num_layers)
        scale = 0.0 if path in frozen else cfg.layerwise_lr_decay ** (num_layers + 1 - depth)
        rates["/".join(path)] = float(schedule(step)) * scale
    return rates


def count_params(params: Any) -> int:
    return sum(int(jnp.size(x)) for x in jax.tree.leaves(params))
