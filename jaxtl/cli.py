"""The ``jaxtl`` command: a thin shell over the recipes (:mod:`jaxtl.tasks`), the loop, the head
registry (:mod:`jaxtl.heads`) and :mod:`jaxtl.hf`.

    jaxtl finetune --config configs/demo_finetune.yaml --workdir runs/demo
    jaxtl pretrain --config configs/demo_pretrain.yaml --workdir runs/pretrain
    jaxtl prepare  --config configs/pretrain_base_fsdp.yaml  # tokenize once into data.prepared_dir
    jaxtl evaluate --model runs/demo/best --file reviews.csv --config configs/demo_finetune.yaml
    jaxtl predict  --model runs/demo/best --file new.csv --output predictions.csv
    jaxtl export   --workdir runs/demo --out exported/ [--step N | --best]  # checkpoint -> HF folder
    jaxtl convert  bert-base-uncased converted/ --head classification --num-labels 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from jaxtl.errors import EXIT_BAD_INPUT, EXIT_NON_FINITE


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jaxtl")
    except metadata.PackageNotFoundError:
        return "unknown"


def head_names():
    from jaxtl import heads

    return heads.names()


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="YAML config (see configs/)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-5 (repeatable)",
    )


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (jax.distributed)")
    g.add_argument(
        "--distributed", action="store_true",
        help="call jax.distributed.initialize(); on TPU VMs and SLURM it finds its peers itself",
    )
    g.add_argument("--coordinator", help="HOST:PORT of process 0 (implies --distributed)")
    g.add_argument("--num-processes", type=int, help="total processes (with --coordinator)")
    g.add_argument("--process-id", type=int, help="this process's index (with --coordinator)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxtl",
        description="Transfer learning with BERT in JAX: fine-tune and pretrain from Hugging Face "
        "checkpoints, sharded over a device mesh; results load back into transformers.",
        epilog="Each command has its own --help. Configs live in configs/; see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"jaxtl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("finetune", help="fine-tune for sequence classification or regression",
                       description="Fine-tune a pretrained BERT for classification/regression. "
                       "A workdir with a checkpoint resumes it.")
    _add_config_args(p)
    p.add_argument("--workdir", required=True, help="where checkpoints, metrics and exports go")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a workdir that holds a run with another config "
                   "(its checkpoints, metrics and exports are deleted)")
    _add_distributed_args(p)

    p = sub.add_parser("pretrain", help="pretrain with masked LM (+ next-sentence prediction)",
                       description="Pretrain BERT from scratch or continue from a checkpoint. "
                       "A workdir with a checkpoint resumes it.")
    _add_config_args(p)
    p.add_argument("--workdir", required=True, help="where checkpoints, metrics and exports go")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a workdir that holds a run with another config "
                   "(its checkpoints, metrics and exports are deleted)")
    _add_distributed_args(p)

    p = sub.add_parser("prepare", help="tokenize a pretraining corpus once into sharded files",
                       description="Tokenize a pretraining config's corpus into memory-mapped "
                       "shards in data.prepared_dir (resumes an interrupted preparation; "
                       "rebuilds one made from other sources or another tokenizer). "
                       "`jaxtl pretrain` then reads only the shards.")
    _add_config_args(p)

    for name, text in (("evaluate", "metrics of a fine-tuned model on a labelled file"),
                       ("predict", "predicted label and probabilities for each input")):
        p = sub.add_parser(name, help=text, description=text.capitalize() + ". Column names come "
                           "from the config's data section (or --set data.text_column=...).")
        p.add_argument("--model", required=True, help="an exported HF folder, e.g. WORKDIR/best")
        p.add_argument("--file", required=True, help="CSV/TSV/JSON/JSONL input (token "
                       "classification: CoNLL-style, JSON or JSONL sentences)")
        _add_config_args(p, required=False)
        p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
        if name == "predict":
            p.add_argument("--output", required=True, help="CSV or JSONL file to write (token "
                           "classification: .conll/.txt word<TAB>tag lines, or JSONL)")
        else:
            p.add_argument("--output", help="also write the metrics to this JSON file")

    p = sub.add_parser("export", help="write a run's checkpoint as a Hugging Face folder",
                       description="Export a checkpoint of a workdir (the latest by default) as an "
                       "HF folder, rebuilt from the model metadata saved with the checkpoint.")
    p.add_argument("--workdir", required=True, help="the run's workdir (holds checkpoints/)")
    p.add_argument("--out", required=True, help="the HF folder to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="export this checkpoint step instead of the latest")
    which.add_argument("--best", action="store_true",
                       help="export the step that scored best on validation (train.best_metric)")

    p = sub.add_parser("convert", help="load an HF checkpoint and write it for another head",
                       description="Load an HF BERT checkpoint (folder or hub id) through jaxtl "
                       "and write it as an HF folder for the chosen head: checks that it loads "
                       "and adds newly initialised heads (e.g. BertModel -> classification).")
    p.add_argument("source", help="HF folder, hub id or asset:NAME to read")
    p.add_argument("out", help="HF folder to write (not the source itself)")
    p.add_argument("--head", choices=["none"] + [h for h in head_names() if h], default="none",
                   help="head to write: none (the bare encoder) or a task head (new weights "
                   "initialised where the source lacks them)")
    p.add_argument("--num-labels", type=int, help="outputs of a classification head (1: regression)")
    return parser


def _init_distributed(args) -> None:
    if not (getattr(args, "distributed", False) or getattr(args, "coordinator", None)):
        return
    import jax

    kwargs = {}
    if args.coordinator:
        if args.num_processes is None or args.process_id is None:
            raise SystemExit("jaxtl: error: --coordinator needs --num-processes and --process-id")
        kwargs = dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
                      process_id=args.process_id)
    jax.distributed.initialize(**kwargs)


def _run(args) -> int:
    from jaxtl import config as config_lib

    cfg = config_lib.load(args.config, args.overrides)  # before importing jax: bad configs fail fast
    from jaxtl import tasks

    if (cfg.task == "pretrain") != (args.command == "pretrain"):
        raise config_lib.ConfigError(
            f"{args.config} is a task={cfg.task!r} config; use "
            f"`jaxtl {'pretrain' if cfg.task == 'pretrain' else 'finetune'}`"
        )
    _init_distributed(args)
    results = tasks.run(cfg, args.workdir, overwrite=args.overwrite)
    import jax

    if jax.process_index() == 0:
        print(json.dumps({k: v for k, v in results.items()}, indent=2, sort_keys=True))
    return 0


def _prepare(args) -> int:
    from jaxtl import config as config_lib, hf, runlog
    from jaxtl.data import prepared

    cfg = config_lib.load(args.config, args.overrides)
    if cfg.task != "pretrain":
        raise config_lib.ConfigError(
            f"{args.config} is a task={cfg.task!r} config; `jaxtl prepare` prepares pretraining data"
        )
    if cfg.data.prepared_dir is None:
        raise config_lib.ConfigError(
            f"{args.config}: set data.prepared_dir (the folder to prepare the data in)"
        )
    runlog.setup_logging()
    name = cfg.model.tokenizer or cfg.model.pretrained
    meta = prepared.prepare(cfg.data, hf.resolve(name), str(name))
    print(json.dumps({"prepared_dir": cfg.data.prepared_dir, **meta["totals"]}, indent=2,
                     sort_keys=True))
    return 0


def _load_for_inference(args):
    """Config (for column names), model, params, tokenizer and recipe of a fine-tuned HF folder.

    The head comes from the folder's ``architectures``; a folder without trained weights for it
    is refused (a newly initialised head would give random predictions)."""
    import importlib

    import jax.numpy as jnp

    from jaxtl import config as config_lib, heads, hf, runlog

    from jaxtl import tasks

    runlog.setup_logging()
    head = hf.head_of_folder(args.model)
    head_spec = heads.get(head)
    if args.config:
        cfg = config_lib.load(args.config, args.overrides)
    else:  # column names from --set alone, on top of the defaults of the head's task
        task = next((t for t, module in tasks.RECIPES.items() if module == head_spec.recipe),
                    "finetune")
        raw = {"task": task, "model": {"pretrained": args.model}, "data": {"train_file": args.file}}
        recipe = importlib.import_module(head_spec.recipe) if head_spec.recipe else None
        if hasattr(recipe, "inference_data_defaults"):  # e.g. multi-label from config.json
            raw["data"].update(recipe.inference_data_defaults(hf.read_config(hf.resolve(args.model))))
        cfg = config_lib.from_dict(config_lib.apply_overrides(raw, args.overrides))
    if head_spec.recipe is None:
        architectures = hf.read_config(hf.resolve(args.model)).get("architectures")
        raise config_lib.ConfigError(
            f"{args.model} holds a {head or 'bare encoder'} model ({architectures}); "
            f"`jaxtl {args.command}` needs a fine-tuned task head"
        )
    model, params = hf.load(args.model, head=head, dtype=jnp.float32, new_heads=False)
    tokenizer = hf.tokenizer(args.model)
    return cfg, model, params, tokenizer, importlib.import_module(head_spec.recipe)


def _evaluate(args) -> int:
    cfg, model, params, tokenizer, recipe = _load_for_inference(args)
    result = recipe.evaluate_file(cfg, model, params, tokenizer, args.file, args.batch_size)
    print(json.dumps(result, indent=2, sort_keys=True))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


def _predict(args) -> int:
    import csv

    cfg, model, params, tokenizer, recipe = _load_for_inference(args)
    rows = recipe.predict_file(cfg, model, params, tokenizer, args.file, args.batch_size)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(recipe, "write_predictions"):  # the task's own formats (e.g. CoNLL tags per word)
        recipe.write_predictions(rows, out)
    elif out.suffix == ".json":
        out.write_text(json.dumps(rows, indent=1) + "\n")
    elif out.suffix == ".jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["predicted_label"])
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
    return 0


def _export(args) -> int:
    """A checkpoint of a run -> an HF folder, rebuilt from the metadata saved with it (model
    config, labels, tokenizer), without reading the training data or the workdir's config.yaml."""
    import jax

    from jaxtl import checkpoint, hf, runlog, sharding, tasks
    from jaxtl.errors import CheckpointError

    runlog.setup_logging()
    ckpt_dir = Path(args.workdir) / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{args.workdir} has no checkpoints/ folder")
    ckpts = checkpoint.Checkpointer(ckpt_dir, read_only=True)
    step = "best" if args.best else args.step  # None: the latest
    found = ckpts.read_meta(step if isinstance(step, int) else None)
    if found is None:
        raise CheckpointError(f"{ckpt_dir} holds no readable checkpoint")
    model, tokenizer = tasks.model_from_meta(found[0])  # the run's model, whatever step
    params, step = ckpts.restore_params(sharding.abstract_params(model), step=step)
    hf.save(model, jax.device_get(params), args.out, tokenizer=tokenizer)
    print(f"exported step {step} of {args.workdir} to {args.out}", file=sys.stderr)
    return 0


def _convert(args) -> int:
    from jaxtl import hf, runlog
    from jaxtl.errors import ConfigError

    runlog.setup_logging()
    source = Path(args.source).expanduser()
    if source.exists() and Path(args.out).expanduser().resolve() == source.resolve():
        raise ConfigError(f"convert would write {args.out} over its own input; choose another OUT")
    head = None if args.head == "none" else args.head
    model, params = hf.load(args.source, head=head, num_labels=args.num_labels)
    tokenizer = None
    try:
        tokenizer = hf.tokenizer(args.source)
    except hf.CheckpointError:
        pass
    hf.save(model, params, args.out, tokenizer=tokenizer)
    print(f"wrote {args.out} ({type(model).__name__})", file=sys.stderr)
    return 0


COMMANDS = {"finetune": _run, "pretrain": _run, "prepare": _prepare, "evaluate": _evaluate, "predict": _predict,
            "export": _export, "convert": _convert}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' "PyTorch was not found. Models won't be available..." advisory is noise
    # for jaxtl, which uses only its tokenizers and configs.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from jaxtl.errors import JaxtlError, NonFiniteError, Stopped

    try:
        return COMMANDS[args.command](args)
    except NonFiniteError as e:
        print(f"jaxtl: error: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    except Stopped as e:
        print(f"jaxtl: {e}", file=sys.stderr)
        return 128 + e.signum
    except JaxtlError as e:
        print(f"jaxtl: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("jaxtl: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def entry() -> int:
    """The process entry point (the ``jaxtl`` script, ``python -m jaxtl.cli``): :func:`main` in a
    process whose malloc uses transparent huge pages where available (:mod:`jaxtl.hostmem`)."""
    import time

    import jaxtl
    from jaxtl import hostmem

    # Before the re-exec, which keeps the environment: start-up times count from here when this
    # process was something else long before (runlog.process_start_time).
    if os.environ.get(jaxtl.ENTRY_TIME_ENV, "").partition(":")[0] != str(os.getpid()):
        os.environ[jaxtl.ENTRY_TIME_ENV] = f"{os.getpid()}:{time.time()!r}"
    hostmem.reexec_with_huge_pages()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
