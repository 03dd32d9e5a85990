"""The training loop shared by every task: it runs what a recipe (:mod:`jaxtl.tasks`) hands it
and imports no model, family or head.

    results = jaxtl.tasks.run(jaxtl.config.load("configs/demo_finetune.yaml"), "runs/demo")

What a run writes in its workdir (process 0 for files, every process for checkpoints):
``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per log step and per
evaluation), TensorBoard event files in ``tb/``, orbax checkpoints in ``checkpoints/``, the best
model as an HF folder in ``best/`` and the last one in ``final/``, and ``eval_results.json``.

Resuming: a workdir that has a checkpoint continues from it. Every batch is a pure function of
(seed, step) and dropout keys are ``fold_in(key(seed), step)``, so a resumed run computes exactly
what an uninterrupted one would (the metric window in progress is saved with the checkpoint).
SIGTERM/SIGINT save a checkpoint at the current step and stop; rerun the same command to resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.experimental import multihost_utils

from jaxtl import checkpoint, optim, runlog, sharding, steps, workdir as workdir_lib
from jaxtl.config import Config
from jaxtl.errors import ConfigError, NonFiniteError, Stopped

log = logging.getLogger("jaxtl")




@dataclasses.dataclass
class EvalSet:
    name: str
    batches: Callable[[], Iterator[dict[str, np.ndarray]]]  # this process's rows
    num_batches: int
    # Turns the concatenated outputs + indices (process 0) into extra metrics (F1, MCC, ...).
    finish: Callable[[dict[str, np.ndarray], np.ndarray], dict[str, float]] | None = None
    output_keys: tuple[str, ...] = ()


@dataclasses.dataclass
class Setup:
    """What a task contributes to the loop."""

    model: Any  # a linen module whose .config has num_hidden_layers, num_attention_heads, ...
    task: steps.Task
    export: Callable[[Any, Path], None]  # (host params, folder) -> an HF folder there
    pretrained: dict | None  # flat path -> host array, or None (from scratch)
    train_batch: Callable[[int], dict[str, np.ndarray]]  # step -> this process's rows
    steps_per_epoch: int
    tokens_per_batch: Callable[[dict[str, np.ndarray]], int]
    eval_sets: list[EvalSet]
    best_metric: str
    meta: dict  # recorded in checkpoints (labels, ...)
    # this process's rows -> the model FLOPs of one train step on the global batch they belong
    # to (jaxtl.flops: what the model needs), for `mfu` in metrics.jsonl; None: not reported.
    flops_per_batch: Callable[[dict[str, np.ndarray]], int] | None = None


def _host(tree):
    """Bring (possibly multi-host sharded) arrays to every host as numpy."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


_add_jit = jax.jit(_add)


def evaluate(eval_set: EvalSet, state, eval_step, mesh, shapes: set | None = None) -> dict[str, float]:
    """Metrics over every example of ``eval_set`` exactly once (padding rows weigh 0); the batch
    shapes fed to ``eval_step`` are added to ``shapes``."""
    sums = None
    collected: dict[str, list] = {key: [] for key in eval_set.output_keys}
    indices = []
    for local in eval_set.batches():
        index = local.pop("index", None)
        if shapes is not None:
            shapes.add(_shape_key(local))
        metrics, outputs = eval_step(state, sharding.global_batch(local, mesh))
        sums = metrics if sums is None else _add_jit(sums, metrics)
        if eval_set.output_keys:
            gathered = _host({k: outputs[k] for k in eval_set.output_keys})
            for key in eval_set.output_keys:
                collected[key].append(np.asarray(gathered[key], np.float32))
            indices.append(_host_rows(index))
    if sums is None:
        return {}
    result = steps.summarize(jax.device_get(sums))
    result["examples"] = float(jax.device_get(sums["count"]))
    if eval_set.finish is not None:
        outputs = {k: np.concatenate(v) for k, v in collected.items()}
        index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        result.update(eval_set.finish(outputs, index))
    return result


def _host_rows(local: np.ndarray) -> np.ndarray:
    """Concatenate a per-process array of rows in process order (the global batch order)."""
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def _export(setup: Setup, state, out_dir: Path, extra: dict | None = None) -> None:
    """The params as an HF folder in ``out_dir`` (plus ``extra`` JSON files), replaced whole:
    a kill at any moment leaves the old folder or the new one, never half of one."""
    params = _host(state.params)
    if jax.process_index() == 0:
        tmp = workdir_lib.staging_path(out_dir)
        setup.export(params, tmp)
        for name, value in (extra or {}).items():
            (tmp / name).write_text(json.dumps(value, indent=2) + "\n")
        workdir_lib.publish_dir(tmp, out_dir)
    multihost_utils.sync_global_devices(f"export {out_dir.name}")


class _SignalFlag:
    """Remember SIGTERM/SIGINT instead of dying mid-step; the loop saves and stops at a step
    boundary that every process agrees on."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _agree(signum: int | None, save_due: bool) -> tuple[int | None, bool]:
    """What every process does at this step boundary: stop if any process got a signal (its
    number, the largest if several), save if process 0's clock says a save is due. One tiny
    all-gather on several processes; nothing on one."""
    if jax.process_count() == 1:
        return signum, save_due
    local = np.array([signum or 0, int(save_due)], np.int32)
    every = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, 2)
    agreed_signum = int(every[:, 0].max())
    return (agreed_signum or None), bool(every[0, 1])


def _schedule_lengths(cfg: Config, setup: Setup) -> tuple[int, int, int]:
    """``(updates, eval_every, save_every)`` in optimizer updates (as HF Trainer counts steps:
    with ``grad_accum_steps > 1`` one update takes that many micro-batches)."""
    t, accum = cfg.train, cfg.optim.grad_accum_steps
    updates_per_epoch = max(1, setup.steps_per_epoch // accum)
    updates = t.max_steps if t.max_steps is not None else max(
        1, int(t.epochs * setup.steps_per_epoch) // accum
    )
    eval_every = t.eval_every or updates_per_epoch
    return updates, eval_every, t.save_every or eval_every


def train_loop(cfg: Config, workdir: Path, setup: Setup, *, overwrite: bool = False) -> dict:
    """Train ``setup`` under ``cfg`` in ``workdir``; returns the final evaluation results.

    A workdir holds one run: a rerun whose config differs from the one saved with the run (other
    than its length, mesh, or how it reports and saves) stops naming each difference, unless
    ``overwrite``. Steps, ``log_every``, ``eval_every``, ``save_every`` and checkpoint numbers
    count optimizer updates.
    """
    t, accum = cfg.train, cfg.optim.grad_accum_steps
    workdir.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0
    if overwrite:
        if primary:
            workdir_lib.check_rerun(workdir, cfg.to_dict(), overwrite=True)  # deletes the old run
    else:
        workdir_lib.check_rerun(workdir, cfg.to_dict(), overwrite=False)  # reads only: every process
    if primary:
        workdir_lib.recover(workdir)
        workdir_lib.write_text_atomic(workdir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    multihost_utils.sync_global_devices("workdir ready")

    updates, eval_every, save_every = _schedule_lengths(cfg, setup)
    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.rules_from_config(cfg.mesh)
    sharding.check_model_fits(mesh, setup.model.config)
    sharding.check_batch_fits(mesh, t.batch_size // accum)
    sharding.check_batch_fits(mesh, t.eval_batch_size or 2 * t.batch_size, "train.eval_batch_size")

    abstract = sharding.abstract_params(setup.model)
    tx, schedule = optim.make_optimizer(
        cfg.optim, abstract, total_steps=updates, num_layers=setup.model.config.num_hidden_layers
    )
    state, shardings = sharding.create_train_state(
        setup.model, tx, mesh, rules, rng=jax.random.key(t.seed), pretrained=setup.pretrained
    )
    log.info(
        "model: %s parameters, mesh %s over %d devices (%d processes); %d steps (%d per epoch)",
        f"{optim.count_params(state.params):,}", dict(mesh.shape), mesh.size,
        jax.process_count(), updates, max(1, setup.steps_per_epoch // accum),
    )

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints)
    start_step, window, best = 0, None, None
    restored = ckpt.restore(checkpoint.abstract_with_shardings(state, shardings))
    if restored is not None:
        state, meta, start_step = restored
        best = meta.get("best")
        if meta.get("window"):
            window = {k: sharding.put_global(np.asarray(v, np.float32), sharding.replicated(mesh))
                      for k, v in meta["window"].items()}
        log.info("resumed from %s at step %d", ckpt.directory, start_step)
        if meta.get("updates") not in (None, updates):
            log.info("the run's length changed from %d to %d steps; the learning-rate schedule "
                     "now follows the new length", meta["updates"], updates)
    if start_step >= updates and (workdir / "eval_results.json").exists():
        log.info("%s already finished (step %d)", workdir, start_step)
        return json.loads((workdir / "eval_results.json").read_text())

    train_step = sharding.compile_step(
        steps.make_train_step(setup.task, skip_nonfinite=t.nonfinite == "skip"), mesh, rules, shardings
    )
    eval_step = sharding.compile_step(steps.make_eval_step(setup.task), mesh, rules, shardings, train=False)
    # Without a checkpoint every line on disk is from a run that is redone from step 0.
    writer = runlog.MetricsWriter(workdir, tensorboard=t.tensorboard,
                                  resume_step=start_step if restored is not None else -1)
    rng = jax.random.key(t.seed)
    train_shapes, eval_shapes = set(), set()  # batch shapes fed to each step (one compile each)
    first_step_s = None  # process start -> first update done (imports, data, load, compile)
    state_ok_through = start_step  # every update up to here was finite (checked on the host)

    def meta_for(step: int) -> dict:
        return {
            "step": step, "seed": t.seed, "best": best, "config": cfg.to_dict(), "updates": updates,
            "window": None if window is None else {k: float(v) for k, v in jax.device_get(window).items()},
            **setup.meta,
        }

    def check_finite(step: int) -> None:
        """Refuse to go on from a state that saw a non-finite step (one host sync; called only
        at log, evaluation, save and export boundaries)."""
        nonlocal state_ok_through
        if window is None or state_ok_through == step:
            return
        sums = jax.device_get(window)
        bad = [k for k, v in sums.items() if not math.isfinite(float(v))]
        if t.nonfinite == "stop" and float(sums.get("nonfinite", 0.0)) > 0:
            bad.append("loss or gradient")
        if bad:
            raise NonFiniteError(
                f"non-finite {', '.join(bad)} by step {step}; stopping without evaluating or saving "
                f"this state (last checkpoint: step {ckpt.latest_step()}). Lower optim.lr or check "
                "the data, or set train.nonfinite=skip"
            )
        state_ok_through = step

    def run_evals(step: int, final: bool = False) -> dict[str, dict]:
        """Every held-out split; the test split only at the end: it is reported, never watched
        during training (and evaluating it at every checkpoint doubled the evaluation time)."""
        check_finite(step)
        results = {}
        for eval_set in setup.eval_sets:
            if eval_set.name == "test" and not final:
                continue
            res = evaluate(eval_set, state, eval_step, mesh, shapes=eval_shapes)
            results[eval_set.name] = res
            writer.write({"step": step, "split": eval_set.name, **res})
            log.info("step %d %s: %s", step, eval_set.name,
                     ", ".join(f"{k}={v:.4f}" for k, v in res.items() if k != "examples"))
        return results

    def save(step: int) -> None:
        check_finite(step)
        ckpt.save(step, state, meta_for(step))
        writer.sync()

    from tqdm import tqdm

    bar = tqdm(total=updates, initial=start_step, disable=not (t.progress and primary),
               dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    if start_step == 0 and setup.eval_sets and _eval_at_start(cfg):
        run_evals(0)  # the starting weights' own numbers; not a candidate for best/
    window_start, window_examples, window_tokens, window_flops = time.perf_counter(), 0, 0, 0
    last_save = time.monotonic()
    step = start_step
    with _SignalFlag() as stop:
        try:
            while step < updates:
                for micro in range(step * accum, (step + 1) * accum):
                    local = setup.train_batch(micro)
                    train_shapes.add(_shape_key(local))
                    window_examples += int(local["example_weight"].sum()) * jax.process_count()
                    window_tokens += setup.tokens_per_batch(local) * jax.process_count()
                    if setup.flops_per_batch is not None:
                        window_flops += setup.flops_per_batch(local)
                    state, metrics = train_step(state, sharding.global_batch(local, mesh), rng)
                    window = metrics if window is None else _add_jit(window, metrics)
                if first_step_s is None:  # one host sync, once: start-up as a user waits for it
                    jax.block_until_ready(metrics)
                    first_step_s = time.time() - runlog.process_start_time()
                    log.info("first step finished %.1f s after the process started", first_step_s)
                step += 1
                bar.update(1)
                if step % t.log_every == 0 or step == updates:
                    check_finite(step)
                    sums = jax.device_get(window)
                    elapsed = time.perf_counter() - window_start
                    record = {"step": step, "split": "train", "epoch": step * accum / setup.steps_per_epoch,
                              "lr": float(schedule(step - 1)),
                              **steps.summarize(sums),
                              "examples_per_s": window_examples / elapsed,
                              "tokens_per_s": window_tokens / elapsed,
                              **runlog.mfu_record(window_flops / elapsed, mesh.size)}
                    writer.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_s']:.1f}")
                    window, window_start, window_examples, window_tokens = None, time.perf_counter(), 0, 0
                    window_flops = 0
                paused = time.perf_counter()
                if step % eval_every == 0 and step < updates and setup.eval_sets:
                    results = run_evals(step)
                    best = _track_best(setup, results, best, step, t, state, workdir)
                minutes_due = (t.save_every_minutes is not None
                               and time.monotonic() - last_save >= 60 * t.save_every_minutes)
                signum, save_due = _agree(stop.signum, minutes_due)
                if step % save_every == 0 or save_due or signum is not None:
                    save(step)
                    last_save = time.monotonic()
                    if signum is not None:
                        ckpt.wait()
                        raise Stopped(step, signum)
                # Throughput is training throughput: evaluations and saves don't count.
                window_start += time.perf_counter() - paused
        finally:
            bar.close()

        results = run_evals(updates, final=True) if setup.eval_sets else {}
        best = _track_best(setup, results, best, updates, t, state, workdir)
        if ckpt.latest_step() != updates:
            save(updates)
        check_finite(updates)
        _report_compilations(writer, updates, train_step, train_shapes, eval_step, eval_shapes,
                             first_step_s)
        _export(setup, state, workdir / "final")
        ckpt.close()
        writer.close()
    final = {"step": updates, **{name: res for name, res in results.items()}, "best": best}
    if primary:
        workdir_lib.write_text_atomic(workdir / "eval_results.json",
                                 json.dumps(final, indent=2, sort_keys=True) + "\n")
    return final


def _eval_at_start(cfg: Config) -> bool:
    if cfg.train.eval_at_start is not None:
        return cfg.train.eval_at_start
    return cfg.task == "pretrain" and bool(cfg.model.pretrained)


def _shape_key(batch: dict[str, np.ndarray]) -> tuple:
    """What makes the jitted step compile again: every input's shape and dtype."""
    return tuple(sorted((k, np.shape(v), np.asarray(v).dtype.str) for k, v in batch.items()))


def _report_compilations(writer, step: int, train_step, train_shapes: set, eval_step, eval_shapes: set,
                         first_step_s: float | None):
    """One ``split: compile`` line: how many executables each step holds vs the distinct batch
    shapes it was fed in this process (more executables than shapes means something retraces:
    a Python scalar, a weak type, a changing sharding, and every such step pays a compile), and
    ``first_step_s``, the seconds from process start to the first finished update (None when
    this process ran none)."""
    record = {"step": step, "split": "compile", "first_step_s": first_step_s,
              "train_shapes": len(train_shapes), "train_compilations": train_step.jitted._cache_size(),
              "eval_shapes": len(eval_shapes), "eval_compilations": eval_step.jitted._cache_size()}
    writer.write(record)
    log.info("compiled the train step for %d batch shapes (%d seen), the eval step for %d (%d seen)",
             record["train_compilations"], record["train_shapes"],
             record["eval_compilations"], record["eval_shapes"])
    for kind in ("train", "eval"):
        if record[f"{kind}_compilations"] > record[f"{kind}_shapes"]:
            log.warning("the %s step compiled %d times for %d batch shapes: something retraces",
                        kind, record[f"{kind}_compilations"], record[f"{kind}_shapes"])


def _track_best(setup: Setup, results: dict, best: dict | None, step: int, t, state, workdir: Path):
    """Export the model when ``best_metric`` on the validation set improves (never on test)."""
    name = "validation"
    if name not in results:
        return best
    metric = t.best_metric or setup.best_metric
    if metric not in results[name]:
        raise ConfigError(
            f"train.best_metric={metric!r} is not computed on {name}; available: {sorted(results[name])}"
        )
    value = results[name][metric]
    better = best is None or (value > best["value"] if t.best_mode == "max" else value < best["value"])
    if better and math.isfinite(value):
        best = {"step": step, "split": name, "metric": metric, "value": value}
        if t.export_best:
            _export(setup, state, workdir / "best", extra={"jaxtl_best.json": best})
        log.info("new best %s %s=%.4f at step %d", name, metric, value, step)
    return best
