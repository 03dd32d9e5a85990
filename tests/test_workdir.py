"""One workdir, one run: export folders whole after a kill at any point, metrics.jsonl after a
kill -9, and the config check of a rerun. Pure file operations on tmp folders (no JAX work)."""

import json
import logging

import pytest
import yaml

from jaxtl import workdir as wd
from jaxtl.config import Config, FinetuneDataConfig
from jaxtl.errors import ConfigError, DataError


# --- publish_dir / recover -------------------------------------------------------------------


def write_export(folder, version: str):
    """A stand-in HF export: two files that must come from the same version."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"version": version}))
    (folder / "model.safetensors").write_text(version * 100)


def export_version(folder) -> str:
    """The version a folder holds, checking it is whole (both files, same version)."""
    version = json.loads((folder / "config.json").read_text())["version"]
    assert (folder / "model.safetensors").read_text() == version * 100
    return version


def leftovers(root) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_publish_replaces_the_folder(tmp_path):
    dest = tmp_path / "best"
    write_export(dest, "old")
    tmp = wd.staging_path(dest)
    write_export(tmp, "new")
    wd.publish_dir(tmp, dest)
    assert export_version(dest) == "new"
    assert leftovers(tmp_path) == ["best"]


def test_publish_the_first_time(tmp_path):
    tmp = wd.staging_path(tmp_path / "final")
    write_export(tmp, "new")
    wd.publish_dir(tmp, tmp_path / "final")
    assert export_version(tmp_path / "final") == "new" and leftovers(tmp_path) == ["final"]


def test_staging_path_clears_a_stale_folder(tmp_path):
    write_export(tmp_path / "best.tmp", "stale")
    tmp = wd.staging_path(tmp_path / "best")
    assert not tmp.exists()


# A kill after the new folder is written (tmp complete) and before each of publish_dir's steps.
STEPS = [wd._move_aside, lambda dest: wd._move_in(dest.parent / "best.tmp", dest), wd._drop_old]


@pytest.mark.parametrize("had_old", [True, False], ids=["replacing", "first-export"])
@pytest.mark.parametrize("killed_before", [0, 1, 2, 3], ids=["aside", "move-in", "drop-old", "done"])
def test_recover_after_a_kill_at_every_point(tmp_path, had_old, killed_before):
    dest = tmp_path / "best"
    if had_old:
        write_export(dest, "old")
    write_export(wd.staging_path(dest), "new")
    for step in STEPS[:killed_before]:
        step(dest)

    actions = wd.recover(tmp_path)

    assert leftovers(tmp_path) == (["best"] if had_old or killed_before >= 2 else [])
    if killed_before >= 2:  # the new folder was moved in: it stays
        assert export_version(dest) == "new"
    elif had_old:  # not published yet: the old one is whole, the unpublished one is gone
        assert export_version(dest) == "old"
    assert bool(actions) == (killed_before < 2 or (killed_before == 2 and had_old))
    # A rerun can publish again from here.
    write_export(wd.staging_path(dest), "again")
    wd.publish_dir(tmp_path / "best.tmp", dest)
    assert export_version(dest) == "again" and leftovers(tmp_path) == ["best"]


def test_publish_after_an_unrecovered_kill_keeps_a_whole_folder(tmp_path):
    """publish_dir itself repairs a leftover best.old (killed between move-aside and move-in)."""
    dest = tmp_path / "best"
    write_export(tmp_path / "best.old", "old")  # dest itself missing
    tmp = tmp_path / "best.tmp"
    write_export(tmp, "new")
    wd.publish_dir(tmp, dest)
    assert export_version(dest) == "new" and leftovers(tmp_path) == ["best"]


def test_recover_removes_half_written_files(tmp_path):
    (tmp_path / "metrics.jsonl.tmp").write_text('{"step": 1')
    (tmp_path / "eval_results.json.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("mine")
    wd.recover(tmp_path)
    assert leftovers(tmp_path) == ["notes.txt"]


def test_write_text_atomic(tmp_path):
    wd.write_text_atomic(tmp_path / "eval_results.json", "{}\n")
    wd.write_text_atomic(tmp_path / "eval_results.json", '{"step": 8}\n')
    assert json.loads((tmp_path / "eval_results.json").read_text()) == {"step": 8}
    assert leftovers(tmp_path) == ["eval_results.json"]


# --- metrics.jsonl ---------------------------------------------------------------------------


def metrics_text(*steps, torn: str = "") -> str:
    return "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps) + torn


def test_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(metrics_text(1, 2, 3, torn='{"step": 4, "lo'))
    caplog.set_level(logging.WARNING, logger="jaxtl")
    assert [r["step"] for r in wd.read_metrics(path)] == [1, 2, 3]
    assert "torn last line 4" in caplog.text


def test_bad_line_in_the_middle_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(metrics_text(1) + "garbage\n" + metrics_text(3))
    with pytest.raises(DataError, match="metrics.jsonl line 2"):
        wd.read_metrics(path)


def test_truncate_metrics_keeps_steps_up_to_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(metrics_text(2, 4, 6, 8, torn='{"step": 10,'))
    kept = wd.truncate_metrics(path, resume_step=6)
    assert [r["step"] for r in kept] == [2, 4, 6]
    assert [r["step"] for r in wd.read_metrics(path)] == [2, 4, 6]
    assert path.read_text().endswith("\n") and leftovers(tmp_path) == ["metrics.jsonl"]
    assert wd.truncate_metrics(tmp_path / "absent.jsonl", 3) == []


def test_metrics_log_resumes_after_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(metrics_text(1, 2, 3, torn='{"step": 4, "lo'))  # kill -9 while writing step 4
    log = wd.MetricsLog(path, resume_step=3)
    log.write({"step": 4, "loss": 0.25})
    log.sync()
    log.write({"step": 5, "loss": 0.2})
    log.close()
    assert [r["step"] for r in wd.read_metrics(path)] == [1, 2, 3, 4, 5]


# --- config of a rerun -----------------------------------------------------------------------


def resolved(**sections) -> dict:
    config = Config(data=FinetuneDataConfig(train_file="train.csv")).to_dict()
    config["model"]["pretrained"] = "asset:all-MiniLM-L6-v2"
    for section, values in sections.items():
        config[section].update(values)
    return config


def test_compare_configs_sorts_differences_from_allowed_changes():
    old = resolved()
    new = resolved(train={"seed": 1, "max_steps": 100, "log_every": 5, "export_best": False},
                   optim={"lr": 3e-5}, mesh={"data": 2, "fsdp": 4, "rules": {"embed": "fsdp"}})
    differences, allowed = wd.compare_configs(old, new)
    assert [c.key for c in differences] == ["optim.lr", "train.seed"]
    assert sorted(c.key for c in allowed) == [
        "mesh.data", "mesh.fsdp", "mesh.rules", "mesh.rules.embed", "train.export_best", "train.log_every",
        "train.max_steps",
    ]
    assert wd.format_differences(differences) == "optim.lr: 2e-05 -> 3e-05\ntrain.seed: 0 -> 1"


def test_compare_configs_nested_and_absent_keys():
    old, new = resolved(), resolved(model={"overrides": {"vocab_size": 99}})
    del old["train"]["best_mode"]  # a key added to jaxtl after the old run began ...
    new["train"]["save_every_minutes"] = 30  # ... and an allowed one
    differences, allowed = wd.compare_configs(old, new, defaults=wd.config_defaults("finetune"))
    assert [str(c) for c in differences] == ["model.overrides.vocab_size: (absent) -> 99"]
    assert [str(c) for c in allowed] == ["train.save_every_minutes: 10.0 -> 30"]  # vs its default
    # Without defaults an absent key is a difference.
    assert "train.best_mode" in [c.key for c in wd.compare_configs(old, new)[0]]


def test_json_and_yaml_round_trips_compare_equal():
    config = resolved(data={"labels": ["neg", "pos"]})
    assert wd.compare_configs(json.loads(json.dumps(config)), config) == ([], [])
    assert wd.compare_configs(yaml.safe_load(yaml.safe_dump(config)), config) == ([], [])


def checkpointed_run(workdir, config: dict, step: int = 4):
    """A workdir as train.py leaves it: a checkpoint whose meta holds the config, metrics, exports."""
    import jax.numpy as jnp

    from jaxtl.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    ckpt.save(step, {"w": jnp.ones(3)}, {"step": step, "seed": 0, "config": config})
    ckpt.close()
    (workdir / "metrics.jsonl").write_text(metrics_text(step))
    write_export(workdir / "best", "old")


def test_check_rerun_same_config_resumes(tmp_path):
    checkpointed_run(tmp_path, resolved())
    allowed = wd.check_rerun(tmp_path, resolved(train={"max_steps": 50}), overwrite=False)
    assert [str(c) for c in allowed] == ["train.max_steps: null -> 50"]


def test_check_rerun_names_every_differing_key(tmp_path):
    checkpointed_run(tmp_path, resolved())
    new = resolved(train={"seed": 1}, optim={"lr": 3e-5})
    with pytest.raises(ConfigError) as error:
        wd.check_rerun(tmp_path, new, overwrite=False)
    message = str(error.value)
    assert "optim.lr: 2e-05 -> 3e-05" in message and "train.seed: 0 -> 1" in message
    assert str(tmp_path / "checkpoints" / "4") in message and "--overwrite" in message
    assert "\n" not in message
    assert (tmp_path / "checkpoints").exists()  # nothing touched


def test_check_rerun_falls_back_to_config_yaml(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(resolved()))
    with pytest.raises(ConfigError, match=r"config.yaml\): train.seed: 0 -> 7"):
        wd.check_rerun(tmp_path, resolved(train={"seed": 7}), overwrite=False)


def test_check_rerun_prefers_the_checkpoint_over_config_yaml(tmp_path):
    """config.yaml may already hold the config of a rerun that failed; the checkpoint is the truth."""
    checkpointed_run(tmp_path, resolved())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(resolved(train={"seed": 7})))
    assert wd.check_rerun(tmp_path, resolved(), overwrite=False) == []


def test_check_rerun_empty_workdir(tmp_path):
    assert wd.check_rerun(tmp_path / "new", resolved(), overwrite=False) == []


def test_overwrite_removes_the_run_and_nothing_else(tmp_path, caplog):
    checkpointed_run(tmp_path, resolved())
    write_export(tmp_path / "final.old", "x")
    (tmp_path / "my-notes.txt").write_text("keep me")
    caplog.set_level(logging.WARNING, logger="jaxtl")
    assert wd.check_rerun(tmp_path, resolved(train={"seed": 1}), overwrite=True) == []
    assert leftovers(tmp_path) == ["my-notes.txt"]
    assert "--overwrite: removed" in caplog.text and "checkpoints" in caplog.text
