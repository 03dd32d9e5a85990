"""Checkpoint faults: only corruption falls back to an older step; everything else is one clear
CheckpointError naming the path. Tiny TrainStates (AdamW under MultiSteps, like jaxtl's optimizer
stack), saved synchronously into tmp folders through the ``etils.epath`` API.

Tests run as root here, where ``chmod 000`` does not stop reads, so permission and disk-full errors
are injected by monkeypatching orbax's restore/save to raise the OSError the OS would.
"""

import errno
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax.training.train_state import TrainState

from jaxtl.checkpoint import Checkpointer, abstract_with_shardings, classify
from jaxtl.errors import CheckpointError

# A failed TensorStore read leaves orbax's background event loop complaining; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def make_state(hidden: int = 4, labels: int = 2, fill: float = 1.0) -> TrainState:
    params = {
        "bert": {"dense": {"kernel": jnp.full((3, hidden), fill), "bias": jnp.zeros(hidden)}},
        "classifier": {"kernel": jnp.full((hidden, labels), fill), "bias": jnp.zeros(labels)},
    }
    tx = optax.MultiSteps(optax.adamw(1e-3), every_k_schedule=2)
    state = TrainState.create(apply_fn=None, params=params, tx=tx)
    return state.replace(step=jnp.zeros((), jnp.int32))  # an array, as jaxtl's states hold


def abstract(state: TrainState) -> TrainState:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return abstract_with_shardings(state, jax.tree.map(lambda _: device, state))


def saved(directory, steps=(2, 4, 6), **state_kw) -> Checkpointer:
    """A Checkpointer (keep 3) holding ``steps``, step s with every param filled with s."""
    ckpt = Checkpointer(epath.Path(directory), keep=3, async_save=False)
    for step in steps:
        ckpt.save(step, make_state(fill=float(step), **state_kw), {"step": step, "seed": 0,
                                                                  "best": {"step": 4, "value": 0.9}})
    ckpt.wait()
    return ckpt


def reopen(directory) -> Checkpointer:
    return Checkpointer(epath.Path(directory), keep=3, async_save=False)


def data_files(directory, step) -> list[pathlib.Path]:
    state = pathlib.Path(directory) / str(step) / "state"
    return [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]


def kernel(state) -> float:
    return float(np.asarray(state.params["classifier"]["kernel"]).flat[0])


# --- corruption falls back, and the bad step is moved aside so it can be saved again ---------


CORRUPTIONS = {
    "truncated array file": lambda d, s: [f.write_bytes(b"\0" * 7) for f in data_files(d, s)],
    "deleted array file": lambda d, s: [f.unlink() for f in data_files(d, s)],
    "flipped byte": lambda d, s: [
        f.write_bytes(bytes(b ^ 0xFF if i == len(f.read_bytes()) // 2 else b
                            for i, b in enumerate(f.read_bytes()))) for f in data_files(d, s)],
    "broken meta JSON": lambda d, s: (pathlib.Path(d) / str(s) / "meta" / "metadata").write_text('{"st'),
    "broken tree metadata": lambda d, s: (pathlib.Path(d) / str(s) / "state" / "_METADATA").write_text("{"),
    "no commit marker": lambda d, s: (pathlib.Path(d) / str(s) / "commit_success.txt").unlink(),
    "state item missing": lambda d, s: __import__("shutil").rmtree(pathlib.Path(d) / str(s) / "state"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_newest_falls_back_and_is_moved_aside(tmp_path, caplog, corruption):
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    CORRUPTIONS[corruption](directory, 6)
    caplog.set_level(logging.WARNING, logger="jaxtl")

    ckpt = reopen(directory)
    state, meta, step = ckpt.restore(abstract(make_state()))
    assert (step, meta["step"], kernel(state)) == (4, 4, 4.0)
    assert "6" in caplog.text and "corrupt" in caplog.text
    # The bad step is kept for inspection outside the manager's folder, and its number is free.
    moved = list((tmp_path / "checkpoints-corrupt").iterdir())
    assert [p.name.split("-")[0] for p in moved] == ["6"]
    assert ckpt.steps() == [2, 4]
    ckpt.save(6, make_state(fill=66.0), {"step": 6})  # raised StepAlreadyExistsError before
    ckpt.close()
    state, meta, step = reopen(directory).restore(abstract(make_state()))
    assert (step, kernel(state)) == (6, 66.0)


def test_unfinished_tmp_dir_is_ignored(tmp_path):
    """A save killed before orbax's final rename leaves ``<step>.orbax-checkpoint-tmp-*``."""
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    (directory / "6").rename(directory / "8.orbax-checkpoint-tmp-123")
    ckpt = reopen(directory)
    state, _, step = ckpt.restore(abstract(make_state()))
    assert step == 4
    ckpt.save(8, make_state(fill=8.0), {"step": 8})
    ckpt.close()
    assert reopen(directory).steps() == [2, 4, 8]


def test_all_corrupt_names_the_directory(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory, steps=(2, 4)).close()
    for step in (2, 4):
        CORRUPTIONS["truncated array file"](directory, step)
    with pytest.raises(CheckpointError, match=f"{directory}.*all corrupt.*step 4.*step 2"):
        reopen(directory).restore(abstract(make_state()))
    # Nothing moved: the user decides.
    assert reopen(directory).steps() == [2, 4]


def test_no_checkpoint_is_none(tmp_path):
    assert reopen(tmp_path / "checkpoints").restore(abstract(make_state())) is None


# --- not corruption: one clear error, nothing moved ------------------------------------------


@pytest.mark.parametrize("change, message", [
    (dict(labels=3), r"params/classifier/bias has shape \(2,\) in the checkpoint but \(3,\) here"),
    (dict(hidden=5), r"params/bert/dense/bias has shape \(4,\) in the checkpoint but \(5,\) here"),
])
def test_checkpoint_of_another_model_shape(tmp_path, change, message):
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    with pytest.raises(CheckpointError, match=message) as error:
        reopen(directory).restore(abstract(make_state(**change)))
    assert str(directory / "6") in str(error.value)
    assert reopen(directory).steps() == [2, 4, 6]


def test_checkpoint_of_another_structure(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    other = make_state()
    other = other.replace(params={**other.params, "pooler": {"bias": jnp.zeros(4)}})
    other = other.replace(opt_state=other.tx.init(other.params))
    with pytest.raises(CheckpointError, match=r"params/pooler/bias \(shape \(4,\)\) is not in the checkpoint"):
        reopen(directory).restore(abstract(other))


def test_mismatch_is_reported_even_behind_a_corrupt_step(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    CORRUPTIONS["truncated array file"](directory, 6)
    with pytest.raises(CheckpointError, match=str(directory / "4")):
        reopen(directory).restore(abstract(make_state(labels=3)))


@pytest.mark.parametrize("error", [
    PermissionError(errno.EACCES, "Permission denied"),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EROFS, "Read-only file system"),
    ValueError('PERMISSION_DENIED: Error reading local file "x": [OS error: Permission denied]'),
    ValueError("UNAVAILABLE: gs://bucket unreachable"),
])
def test_environment_errors_are_not_corruption(tmp_path, monkeypatch, error):
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    ckpt = reopen(directory)

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(ckpt.manager, "restore", refuse)
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {directory / '6'}"):
        ckpt.restore(abstract(make_state()))
    assert reopen(directory).steps() == [2, 4, 6]
    assert not (tmp_path / "checkpoints-corrupt").exists()


def test_disk_full_on_save_names_the_path(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(CheckpointError, match=f"could not write checkpoint {tmp_path / 'checkpoints' / '3'}.*No space"):
        ckpt.save(3, make_state(), {"step": 3})


def test_a_bug_is_not_swallowed(tmp_path, monkeypatch):
    ckpt = saved(tmp_path / "checkpoints")
    monkeypatch.setattr(ckpt.manager, "restore", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        ckpt.restore(abstract(make_state()))


def test_classify():
    assert classify(ValueError("DATA_LOSS: bad")) == "corrupt"
    assert classify(FileNotFoundError("x")) == "corrupt"
    assert classify(PermissionError(errno.EACCES, "no")) == "environment"
    wrapped = ValueError("restore failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "full")
    assert classify(wrapped) == "environment"
    assert classify(ValueError("Requested shape: (3,) is not compatible with the stored shape: (2,)")) == "mismatch"
    assert classify(TypeError("bug")) == "other"


# --- paths and export ------------------------------------------------------------------------


def test_relative_and_string_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer("run/checkpoints", async_save=False)
    assert isinstance(ckpt.directory, epath.Path) and ckpt.directory.is_absolute()
    assert ckpt.quarantine == epath.Path(tmp_path / "run" / "checkpoints-corrupt")
    ckpt.save(1, make_state(), {"step": 1})
    ckpt.close()
    assert Checkpointer(epath.Path(tmp_path) / "run" / "checkpoints").steps() == [1]


def test_gs_path_reaches_orbax_as_is(monkeypatch):
    """No bucket here: check the path orbax is handed (a gs:// path has no absolute form)."""
    from jaxtl import checkpoint

    handed = []
    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", lambda directory, **kw: handed.append(directory))
    ckpt = Checkpointer("gs://bucket/run/checkpoints")
    assert [str(p) for p in handed] == ["gs://bucket/run/checkpoints"]
    assert str(ckpt.quarantine) == "gs://bucket/run/checkpoints-corrupt"
    assert str(ckpt.step_path(7)) == "gs://bucket/run/checkpoints/7"


def test_restore_params_latest_step_and_best(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    ckpt = Checkpointer(directory, read_only=True)
    params_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_state().params)
    params, step = ckpt.restore_params(params_abstract)
    assert (step, float(params["classifier"]["kernel"][0, 0])) == (6, 6.0)
    params, step = ckpt.restore_params(params_abstract, step=2)
    assert (step, float(params["classifier"]["kernel"][0, 0])) == (2, 2.0)
    params, step = ckpt.restore_params(params_abstract, step="best")  # meta says best is step 4
    assert (step, float(params["classifier"]["kernel"][0, 0])) == (4, 4.0)
    with pytest.raises(CheckpointError, match="no checkpoint of step 3.*2, 4, 6"):
        ckpt.restore_params(params_abstract, step=3)
    wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_state(labels=3).params)
    with pytest.raises(CheckpointError, match="params/classifier/bias"):
        ckpt.restore_params(wrong)


def test_restore_params_best_step_no_longer_kept(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory, steps=(6,)).close()  # meta: best at step 4, which is not kept
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_state().params)
    with pytest.raises(CheckpointError, match="best step 4 is no longer kept.*best/"):
        Checkpointer(directory, read_only=True).restore_params(abstract_params, step="best")


def test_restore_params_skips_corrupt_latest_without_moving_it(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    CORRUPTIONS["truncated array file"](directory, 6)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_state().params)
    ckpt = Checkpointer(directory, read_only=True)
    assert ckpt.restore_params(abstract_params)[1] == 4
    with pytest.raises(CheckpointError, match=f"{directory / '6'} is corrupt"):
        ckpt.restore_params(abstract_params, step=6)
    assert (directory / "6").exists()


def test_read_meta_newest_readable(tmp_path):
    directory = tmp_path / "checkpoints"
    saved(directory).close()
    CORRUPTIONS["broken meta JSON"](directory, 6)
    meta, step = Checkpointer(directory, read_only=True).read_meta()
    assert (step, meta["step"]) == (4, 4)


# --- through today's train loop --------------------------------------------------------------


def test_train_loop_resumes_past_a_corrupt_step_on_the_save_schedule(tmp_path, capsys):
    """Issue 9: the newest checkpoint (step 8, on the save schedule) is corrupt. The rerun resumes
    from step 4 and saves step 8 again; before, that save raised StepAlreadyExistsError on every
    rerun. Runs jaxtl.train unchanged, on a tiny model (~1-2 min of CPU)."""
    import transformers
    import yaml
    from helpers import make_tiny_checkpoint, make_tokenizer, sentiment_rows, write_csv

    from jaxtl import config as config_lib, tasks

    tok = make_tokenizer(tmp_path)
    model = make_tiny_checkpoint(tmp_path, tok, cls=transformers.BertModel)
    rows = sentiment_rows(64, seed=1)
    raw = {
        "task": "finetune",
        "model": {"pretrained": str(model)},
        "data": {"train_file": write_csv(tmp_path / "train.csv", ["sentence", "label"], rows),
                 "max_seq_length": 32, "bucket_sizes": [32]},
        "train": {"batch_size": 8, "max_steps": 8, "save_every": 4, "log_every": 4,
                  "progress": False, "tensorboard": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = config_lib.load(tmp_path / "c.yaml")
    workdir = tmp_path / "run"
    tasks.run(cfg, workdir)
    CORRUPTIONS["truncated array file"](workdir / "checkpoints", 8)
    (workdir / "eval_results.json").unlink()

    capsys.readouterr()
    assert tasks.run(cfg, workdir)["step"] == 8
    err = capsys.readouterr().err  # jaxtl's log handler writes to stderr and does not propagate
    assert "checkpoints/8 is corrupt" in err and "resumed from step 4" in err
    assert [p.name.split("-")[0] for p in (workdir / "checkpoints-corrupt").iterdir()] == ["8"]
    assert reopen(workdir / "checkpoints").steps() == [4, 8]
