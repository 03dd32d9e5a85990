"""The training loop shared by fine-tuning and pretraining: one machinery, two task setups.

    results = jaxtl.train.run(jaxtl.config.load("configs/demo_finetune.yaml"), "runs/demo")

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

from jaxtl import checkpoint, hf, optim, sharding, steps
from jaxtl.config import Config
from jaxtl.heads import build
from jaxtl.errors import ConfigError, NonFiniteError, Stopped
from jaxtl.model import BertConfig, preset

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

    model: Any
    tokenizer: Any
    task: steps.Task
    pretrained: dict | None  # flat path -> host array, or None (from scratch)
    train_batch: Callable[[int], dict[str, np.ndarray]]  # step -> this process's rows
    steps_per_epoch: int
    tokens_per_batch: Callable[[dict[str, np.ndarray]], int]
    eval_sets: list[EvalSet]
    best_metric: str
    meta: dict  # recorded in checkpoints (labels, ...)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (it may be swapped, e.g. by test capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def setup_logging() -> None:
    """Human-readable logs on stderr from process 0 only (other processes warn and above)."""
    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    logger = logging.getLogger("jaxtl")
    logger.setLevel(level)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s jaxtl: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    for noisy in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class MetricsWriter:
    """``metrics.jsonl`` (one object per line) and TensorBoard scalars, process 0 only."""

    def __init__(self, workdir: Path, *, tensorboard: bool, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.tb = None
        if not self.enabled:
            return
        if self.path.exists():
            # Lines past the step we resume from were written by the interrupted run; they are
            # computed again (identically), so drop them to keep one line per event.
            kept = [
                line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"), purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _host(tree):
    """Bring (possibly multi-host sharded) arrays to every host as numpy."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


_add_jit = jax.jit(_add)


def evaluate(eval_set: EvalSet, state, eval_step, mesh) -> dict[str, float]:
    """Metrics over every example of ``eval_set`` exactly once (padding rows weigh 0)."""
    sums = None
    collected: dict[str, list] = {key: [] for key in eval_set.output_keys}
    indices = []
    for local in eval_set.batches():
        index = local.pop("index", None)
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


def _export(setup: Setup, state, out_dir: Path) -> None:
    params = _host(state.params)
    if jax.process_index() == 0:
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        hf.save(setup.model, params, tmp, tokenizer=setup.tokenizer)
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    multihost_utils.sync_global_devices(f"export {out_dir.name}")


class _SignalFlag:
    """Remember SIGTERM/SIGINT instead of dying mid-step; the loop saves and stops."""

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


def train_loop(cfg: Config, workdir: Path, setup: Setup) -> dict:
    """Train ``setup`` under ``cfg`` in ``workdir``; returns the final evaluation results."""
    t = cfg.train
    workdir.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0
    if primary:
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    accum = cfg.optim.grad_accum_steps
    updates = t.max_steps if t.max_steps is not None else max(
        1, int(t.epochs * setup.steps_per_epoch) // accum
    )
    total_steps = updates * accum  # train_step calls (micro-batches)
    eval_every = t.eval_every or setup.steps_per_epoch
    save_every = t.save_every or eval_every

    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.rules_from_config(cfg.mesh)
    sharding.check_model_fits(mesh, setup.model.config)
    sharding.check_batch_fits(mesh, t.batch_size // accum)
    sharding.check_batch_fits(mesh, t.eval_batch_size or 2 * t.batch_size, "train.eval_batch_size")

    abstract = hf.abstract_params(setup.model)
    tx, schedule = optim.make_optimizer(
        cfg.optim, abstract, total_steps=updates, num_layers=setup.model.config.num_hidden_layers
    )
    state, shardings = sharding.create_train_state(
        setup.model, tx, mesh, rules, rng=jax.random.key(t.seed), pretrained=setup.pretrained
    )
    log.info(
        "model: %s parameters, mesh %s over %d devices (%d processes); %d steps (%d per epoch)",
        f"{optim.count_params(state.params):,}", dict(mesh.shape), mesh.size,
        jax.process_count(), total_steps, setup.steps_per_epoch,
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
        if meta.get("seed") != t.seed:
            raise ConfigError(
                f"{workdir} holds a run with train.seed={meta.get('seed')}, not {t.seed}; "
                "use another --workdir or the same seed"
            )
        log.info("resumed from %s at step %d", ckpt.directory, start_step)
    if start_step >= total_steps and (workdir / "eval_results.json").exists():
        log.info("%s already finished (step %d)", workdir, start_step)
        return json.loads((workdir / "eval_results.json").read_text())

    train_step = sharding.compile_step(steps.make_train_step(setup.task), mesh, rules, shardings)
    eval_step = sharding.compile_step(steps.make_eval_step(setup.task), mesh, rules, shardings, train=False)
    writer = MetricsWriter(workdir, tensorboard=t.tensorboard, resume_step=start_step)
    rng = jax.random.key(t.seed)

    def meta_for(step: int) -> dict:
        return {
            "step": step, "seed": t.seed, "best": best, "config": cfg.to_dict(),
            "window": None if window is None else {k: float(v) for k, v in jax.device_get(window).items()},
            **setup.meta,
        }

    def check_finite(sums, step):
        bad = [k for k, v in sums.items() if not math.isfinite(float(v))]
        if bad:
            raise NonFiniteError(
                f"non-finite {', '.join(bad)} at step {step}; stopping without saving this state "
                f"(last checkpoint: step {ckpt.latest_step()}). Lower optim.lr or check the data."
            )

    def run_evals(step: int) -> dict[str, dict]:
        results = {}
        for eval_set in setup.eval_sets:
            res = evaluate(eval_set, state, eval_step, mesh)
            results[eval_set.name] = res
            writer.write({"step": step, "split": eval_set.name, **res})
            log.info("step %d %s: %s", step, eval_set.name,
                     ", ".join(f"{k}={v:.4f}" for k, v in res.items() if k != "examples"))
        return results

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start_step, disable=not (t.progress and primary),
               dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    window_start, window_examples, window_tokens = time.perf_counter(), 0, 0
    step = start_step
    with _SignalFlag() as stop:
        try:
            while step < total_steps:
                local = setup.train_batch(step)
                window_examples += int(local["example_weight"].sum()) * jax.process_count()
                window_tokens += setup.tokens_per_batch(local) * jax.process_count()
                state, metrics = train_step(state, sharding.global_batch(local, mesh), rng)
                window = metrics if window is None else _add_jit(window, metrics)
                step += 1
                bar.update(1)
                if step % t.log_every == 0 or step == total_steps:
                    sums = jax.device_get(window)
                    check_finite(sums, step)
                    elapsed = time.perf_counter() - window_start
                    record = {"step": step, "split": "train", "epoch": step / setup.steps_per_epoch,
                              "lr": float(schedule(max(step // accum - 1, 0))),
                              **steps.summarize(sums),
                              "examples_per_s": window_examples / elapsed,
                              "tokens_per_s": window_tokens / elapsed}
                    writer.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_s']:.1f}")
                    window, window_start, window_examples, window_tokens = None, time.perf_counter(), 0, 0
                paused = time.perf_counter()
                if step % eval_every == 0 and step < total_steps and setup.eval_sets:
                    results = run_evals(step)
                    best = _track_best(setup, results, best, step, t, state, workdir)
                if step % save_every == 0 or stop.signum is not None:
                    if window is not None:
                        check_finite(jax.device_get(window), step)
                    ckpt.save(step, state, meta_for(step))
                    if stop.signum is not None:
                        ckpt.wait()
                        raise Stopped(step, stop.signum)
                # Throughput is training throughput: evaluations and saves don't count.
                window_start += time.perf_counter() - paused
        finally:
            bar.close()

        results = run_evals(total_steps) if setup.eval_sets else {}
        best = _track_best(setup, results, best, total_steps, t, state, workdir)
        if ckpt.latest_step() != total_steps:
            ckpt.save(total_steps, state, meta_for(total_steps))
        _export(setup, state, workdir / "final")
        ckpt.close()
        writer.close()
    final = {"step": total_steps, **{name: res for name, res in results.items()}, "best": best}
    if primary:
        (workdir / "eval_results.json").write_text(json.dumps(final, indent=2, sort_keys=True) + "\n")
    return final


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
            _export(setup, state, workdir / "best")
            if jax.process_index() == 0:
                (workdir / "best" / "jaxtl_best.json").write_text(json.dumps(best, indent=2) + "\n")
        log.info("new best %s %s=%.4f at step %d", name, metric, value, step)
    return best


# --------------------------------------------------------------------------------------------
# Task setups


def _model_config(cfg: Config, base: BertConfig, **extra) -> BertConfig:
    m = cfg.model
    changes = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, **extra)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if getattr(m, name) is not None:
            changes[name] = getattr(m, name)
    return base.replace(**changes)


def _check_vocab(tokenizer, config: BertConfig, source: str) -> None:
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"the tokenizer from {source} has {len(tokenizer)} tokens but the model's vocab_size "
            f"is {config.vocab_size}; use the tokenizer the model was trained with"
        )


def finetune_setup(cfg: Config) -> Setup:
    from jaxtl import metrics as metrics_lib
    from jaxtl.data import classification as cls_data
    from jaxtl.data.batching import ClassificationBatcher

    d, t = cfg.data, cfg.train
    folder = hf.resolve(cfg.model.pretrained)
    tokenizer = hf.tokenizer(cfg.model.tokenizer or folder)
    base = hf.load_config(folder)
    _check_vocab(tokenizer, base, str(cfg.model.tokenizer or folder))
    data = cls_data.load_classification_data(
        d, tokenizer, max_positions=base.max_position_embeddings
    )
    if data.train is None or len(data.train) == 0:
        raise ConfigError("no training examples")
    config = _model_config(
        cfg, base, labels=tuple(data.labels),
        problem_type="regression" if data.regression else "single_label_classification",
    )
    model = build(config, "classification")
    pretrained, new_heads, dropped = hf.convert_state_dict(
        hf.read_state_dict(folder), hf.abstract_params(model), source=str(folder)
    )
    if new_heads:
        log.info("newly initialised (not in %s): %s", folder, ", ".join(new_heads))
    accum = cfg.optim.grad_accum_steps
    micro = t.batch_size // accum
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    common = dict(bucket_sizes=d.bucket_sizes, seed=t.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = ClassificationBatcher(data.train, batch_size=micro, **common)

    def make_eval(split) -> EvalSet:
        def finish(outputs, index):
            keep = index >= 0
            logits = outputs["logits"][keep]
            labels = split.labels[index[keep]]
            if data.regression:
                return metrics_lib.regression_metrics(labels, logits[:, 0])
            return metrics_lib.classification_metrics(labels, logits.argmax(-1))

        batches = ClassificationBatcher(split, batch_size=eval_batch, **common)
        return EvalSet(
            name=split.name,
            batches=batches.eval_batches,
            num_batches=batches.num_eval_batches,
            finish=finish, output_keys=("logits",),
        )

    eval_sets = [make_eval(s) for s in (data.validation, data.test) if s is not None and len(s)]
    return Setup(
        model=model, tokenizer=tokenizer, task=steps.CLASSIFICATION, pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=lambda b: int(b["attention_mask"].sum()),
        eval_sets=eval_sets,
        best_metric="pearson" if data.regression else "accuracy",
        meta={"labels": list(data.labels), "regression": data.regression},
    )


def pretrain_setup(cfg: Config) -> Setup:
    from jaxtl.data import pretraining as pt_data
    from jaxtl.data.batching import PretrainingBatcher

    d, t, m = cfg.data, cfg.train, cfg.model
    tokenizer = hf.tokenizer(m.tokenizer or m.pretrained)
    if m.pretrained:
        folder = hf.resolve(m.pretrained)
        base = hf.load_config(folder, **dict(m.overrides))
    else:
        folder = None
        overrides = {"vocab_size": len(tokenizer), **dict(m.overrides)}
        base = preset(m.size, **overrides)
    _check_vocab(tokenizer, base, str(m.tokenizer or m.pretrained))
    if d.max_seq_length > base.max_position_embeddings:
        raise ConfigError(
            f"data.max_seq_length={d.max_seq_length} exceeds the model's "
            f"max_position_embeddings={base.max_position_embeddings}"
        )
    config = _model_config(cfg, base)
    model = build(config, "pretraining")
    pretrained = None
    if folder is not None:
        pretrained, new_heads, _ = hf.convert_state_dict(
            hf.read_state_dict(folder), hf.abstract_params(model), source=str(folder)
        )
        if new_heads:
            log.info("newly initialised (not in %s): %s", folder, ", ".join(new_heads))
    train, validation = pt_data.load_pretraining_data(d, tokenizer, model_vocab_size=config.vocab_size)
    accum = cfg.optim.grad_accum_steps
    micro = t.batch_size // accum
    eval_batch = t.eval_batch_size or 2 * t.batch_size
    procs = dict(seed=t.seed, process_index=jax.process_index(), process_count=jax.process_count())
    train_batches = PretrainingBatcher(train, batch_size=micro, **procs)
    eval_sets = []
    if validation is not None:
        # Floors to read the scores against, recorded with every validation result: always the
        # most frequent training token at exactly the masked positions, and the NSP majority label.
        # The unigram floor counts every process's masks: a one-process batcher sees them all.
        every_row = PretrainingBatcher(validation, batch_size=eval_batch, seed=t.seed)
        baselines = {"unigram_baseline": pt_data.unigram_baseline_accuracy(
            train, every_row.eval_batches())}
        if d.nsp:
            baselines["nsp_baseline"] = pt_data.nsp_baseline_accuracy(validation)
        log.info("validation baselines: %s", ", ".join(f"{k}={v:.4f}" for k, v in baselines.items()))
        eval_batches = PretrainingBatcher(validation, batch_size=eval_batch, **procs)
        eval_sets.append(EvalSet(
            name="validation",
            batches=eval_batches.eval_batches,
            num_batches=eval_batches.num_eval_batches,
            finish=lambda outputs, index: dict(baselines),
        ))
    return Setup(
        model=model, tokenizer=tokenizer,
        task=steps.PRETRAINING if d.nsp else steps.PRETRAINING_MLM_ONLY,
        pretrained=pretrained,
        train_batch=train_batches.train_batch,
        steps_per_epoch=train_batches.steps_per_epoch,
        tokens_per_batch=lambda b: int(b["attention_mask"].sum()),
        eval_sets=eval_sets,
        best_metric="mlm_accuracy",
        meta={},
    )


def run(cfg: Config, workdir: str | Path) -> dict:
    """Fine-tune or pretrain per ``cfg.task`` in ``workdir`` (resuming if it has a checkpoint)."""
    setup_logging()
    setup = finetune_setup(cfg) if cfg.task == "finetune" else pretrain_setup(cfg)
    return train_loop(cfg, Path(workdir), setup)
