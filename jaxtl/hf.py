"""Hugging Face <-> jaxtl: load HF checkpoints of any registered encoder family into jaxtl
models and export them back.

    model, params = jaxtl.hf.load("bert-base-uncased", head="classification", num_labels=2)
    tok = jaxtl.hf.tokenizer("bert-base-uncased")
    batch = tok(["a sentence", "another one"], padding=True, return_tensors="np")
    out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                      batch["token_type_ids"])          # out["logits"]: [2, 2]
    jaxtl.hf.save(model, params, "exported/", tokenizer=tok)  # transformers loads it back

The family comes from ``config.json``'s ``model_type`` (see :mod:`jaxtl.families`). Conversion is
a fixed table: a jaxtl parameter path ``bert/encoder/layer/0/attention/self/query/kernel`` is the
HF weight ``bert.encoder.layer.0.attention.self.query.weight`` transposed (Linear weights are
(out, in) in torch, (in, out) in Flax); LayerNorm ``scale`` is ``weight`` (legacy
``gamma``/``beta`` accepted); ``embedding`` is ``weight``. Merging is strict: trunk weights that are
missing, unexpected or of the wrong shape are errors that list them; head weights the checkpoint
lacks are newly initialised and named in one log line (or refused, for inference: ``load(...,
new_heads=False)``); weights of other heads are dropped, named.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from flax import traverse_util

from jaxtl import families
from jaxtl.sharding import abstract_params
from jaxtl.errors import CheckpointError, ConfigError
from jaxtl.families import FamilySpec

log = logging.getLogger("jaxtl")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# --------------------------------------------------------------------------------------------
# Finding and reading files


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local folder for ``name_or_path``: the folder itself, a fetched asset, or a hub download."""
    text = str(name_or_path)
    if text.startswith("asset:"):
        from jaxtl import assets

        return Path(assets.resolve(text))
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the folder that holds config.json")
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep == "\\"
    if looks_local:
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                text,
                allow_patterns=["*.json", "*.safetensors", "pytorch_model.bin", "vocab.txt", "*.model",
                                "merges.txt"],
            )
        )
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise CheckpointError(
            f"{text!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # truncated or corrupt file
        raise CheckpointError(f"{path} could not be read (truncated or corrupt?): {e}") from None


def read_state_dict(folder: Path) -> dict[str, np.ndarray]:
    """All weights of an HF folder as numpy arrays, from safetensors (single or sharded) or .bin."""
    single, index, torch_bin = (folder / name for name in WEIGHT_FILES)
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from None
        state = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index} names shard {shard}, which is missing from {folder}")
            state.update(_read_safetensors(folder / shard))
        return state
    if torch_bin.is_file():
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{torch_bin} is a PyTorch pickle; reading it needs torch "
                "(pip install torch), or convert the folder to safetensors"
            ) from None
        try:
            tensors = torch.load(str(torch_bin), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{torch_bin} could not be read: {e}") from None
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in tensors.items()}
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(
        f"{folder} holds no weights (looked for {', '.join(WEIGHT_FILES)}; found {present})"
    )


# --------------------------------------------------------------------------------------------
# Name table


def _canonical(name: str, spec: FamilySpec) -> str:
    """HF weight name -> the name in a head model's layout (trunk under ``<trunk>.``)."""
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    from jaxtl import heads

    if name.startswith(spec.head_prefixes + heads.generic_weight_prefixes() + (spec.trunk + ".",)):
        return name
    return f"{spec.trunk}.{name}"


def hf_name(path: tuple[str, ...]) -> str:
    """jaxtl parameter path -> canonical HF weight name."""
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(path[-1], path[-1])
    return ".".join(path[:-1] + (leaf,))


def convert_state_dict(
    state: dict[str, np.ndarray], abstract_params: Any, spec: FamilySpec, *,
    source: str = "checkpoint",
) -> tuple[dict[tuple[str, ...], np.ndarray], list[str], list[str]]:
    """Map HF weights onto a jaxtl parameter tree of family ``spec``.

    Args:
      state: HF weight name -> array (any of the family's ``*Model``/``*For...`` layouts).
      abstract_params: the target tree (``jax.eval_shape`` of ``model.init``, unboxed).
      spec: the family.
      source: for messages.

    Returns:
      ``(loaded, new_heads, dropped)``: flat path -> array (cast to the target dtype),
      HF names of the head weights that must be newly initialised, and HF names of the
      checkpoint's weights for other heads that were left out.
    """
    by_name = {}
    for name, value in state.items():
        canonical = _canonical(name, spec)
        if canonical in by_name:
            raise CheckpointError(f"{source}: weight {name!r} appears twice (as {canonical!r})")
        by_name[canonical] = value
    for name in spec.ignored:
        by_name.pop(name, None)

    from jaxtl import heads

    head_prefixes = spec.head_prefixes + heads.generic_weight_prefixes()
    is_head = lambda name: name.startswith(head_prefixes)  # noqa: E731
    loaded, new_heads, missing, mismatched = {}, [], [], []
    for path, target in traverse_util.flatten_dict(abstract_params).items():
        name = hf_name(path)
        if name not in by_name:
            optional = is_head(name) or name.startswith(spec.optional_prefixes)
            (new_heads if optional else missing).append(name)
            continue
        stored = np.asarray(by_name.pop(name))
        value = stored.T if path[-1] == "kernel" else stored
        if value.shape != tuple(target.shape):
            expected = tuple(target.shape)[::-1] if path[-1] == "kernel" else tuple(target.shape)
            if is_head(name):
                # Another label set (e.g. a checkpoint fine-tuned on a different task).
                new_heads.append(f"{name} (checkpoint shape {stored.shape}, model {expected})")
                continue
            mismatched.append(f"{name}: checkpoint has shape {stored.shape}, model expects {expected}")
            continue
        loaded[path] = value.astype(target.dtype)
    # Weights of other heads, and optional trunk parts this head does not use (e.g. the pooler
    # under a token-classification head), are dropped and named; anything else is unexpected.
    dropped = sorted(n for n in by_name if is_head(n) or n.startswith(spec.optional_prefixes))
    unexpected = sorted(n for n in by_name if n not in dropped)
    problems = []
    if mismatched:
        problems.append(("weights of the wrong shape", mismatched))
    if missing:
        problems.append(("missing weights", missing))
    if unexpected:
        problems.append(("unexpected weights", unexpected))
    if problems:
        # The first line names the first culprit; the full lists follow, indented.
        what, names = problems[0]
        count = sum(len(n) for _, n in problems)
        first = f"{source} does not match the model config: {what}: {names[0]}" + (
            f" (and {count - 1} more)" if count > 1 else "")
        details = "".join(f"\n  {w}:\n    " + "\n    ".join(n) for w, n in problems)
        raise CheckpointError(first + details)
    return loaded, new_heads, dropped


# --------------------------------------------------------------------------------------------
# Public API


def tokenizer(name_or_path: str | os.PathLike):
    """The Hugging Face fast tokenizer saved with a checkpoint (folder, hub id or asset:)."""
    import transformers

    folder = resolve(name_or_path)
    try:
        cls = _named_tokenizer_class(folder) or transformers.AutoTokenizer
        return cls.from_pretrained(str(folder))
    except Exception as e:
        raise CheckpointError(
            f"could not load a tokenizer from {folder} ({type(e).__name__}: {e}); it needs "
            "tokenizer.json or tokenizer_config.json + vocab.txt"
        ) from None


def _named_tokenizer_class(folder: Path):
    """The tokenizer class ``tokenizer_config.json`` names, when transformers has it; else None
    (AutoTokenizer decides). What AutoTokenizer would pick, without its detour through
    AutoConfig, which imports torch where torch is installed (0.9 s of every start-up)."""
    import transformers

    try:
        name = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str):
        return None
    for candidate in (name, name.removesuffix("Fast")):  # v5 folds XTokenizerFast into XTokenizer
        cls = getattr(transformers, candidate, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase):
            return cls
    return None


def family_of(name_or_path: str | os.PathLike) -> FamilySpec:
    """The encoder family of an HF folder, from ``config.json``'s ``model_type``."""
    folder = resolve(name_or_path)
    hf = read_config(folder)
    return families.for_model_type(hf.get("model_type", "bert"), source=str(folder / "config.json"))


def load_config(name_or_path: str | os.PathLike, **overrides):
    """The family config of an HF folder (``config.json``), with ``overrides`` applied."""
    folder = resolve(name_or_path)
    source = str(folder / "config.json")
    hf = read_config(folder)
    spec = families.for_model_type(hf.get("model_type", "bert"), source=source)
    try:
        return spec.config_cls.from_hf(hf, source=source, **overrides)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None


def head_of_folder(name_or_path: str | os.PathLike) -> str | None:
    """The head an HF folder was saved for, from ``config.json``'s ``architectures``."""
    folder = resolve(name_or_path)
    for architecture in read_config(folder).get("architectures") or []:
        found = families.for_architecture(architecture)
        if found is not None:
            return found[1]
    raise CheckpointError(
        f"{folder / 'config.json'} names no architecture jaxtl knows "
        f"({read_config(folder).get('architectures')}); pass the head explicitly"
    )


def init_params(model: nn.Module, rng: jax.Array, seq_len: int = 8) -> Any:
    """Freshly initialised (unboxed) parameters."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return nn.unbox(jax.jit(model.init)(rng, ids)["params"])


def pretrained_weights(
    folder: str | os.PathLike, model: nn.Module, *, new_heads: bool = True
) -> dict[tuple[str, ...], np.ndarray]:
    """The checkpoint's weights for ``model`` (flat path -> host array), strictly merged.

    Head weights the checkpoint lacks are named in the log (``new_heads=True``) or refused with
    a :class:`CheckpointError` naming the folder and the weights (``new_heads=False``: inference
    must never run a random head).
    """
    folder = resolve(folder)
    spec = families.of_model(model)
    loaded, missing_heads, dropped = convert_state_dict(
        read_state_dict(folder), abstract_params(model), spec, source=str(folder)
    )
    if dropped:
        log.info("not used by this model (another head's weights, or a pooler it has none of): %s",
                 ", ".join(dropped))
    if missing_heads:
        if not new_heads:
            raise CheckpointError(
                f"{folder} has no trained weights for the {type(model).__name__} head "
                f"(missing: {', '.join(missing_heads)}); predicting with a newly initialised head "
                "would be random. Pass a fine-tuned model folder (e.g. WORKDIR/best)"
            )
        log.info("newly initialised (not in %s): %s", folder, ", ".join(missing_heads))
    return loaded


def load(
    name_or_path: str | os.PathLike,
    head: str | None = None,
    num_labels: int | None = None,
    dtype: Any = jnp.float32,
    *,
    labels: tuple[str, ...] | None = None,
    param_dtype: Any = jnp.float32,
    seed: int = 0,
    new_heads: bool = True,
    **config_overrides,
) -> tuple[nn.Module, Any]:
    """Load an HF checkpoint (folder, hub id or ``asset:NAME``) of any registered family.

    Args:
      head: None (bare trunk), ``"pretraining"``, ``"classification"``,
        ``"token_classification"``, ``"question_answering"``, ``"multiple_choice"``
        (``jaxtl.heads.HEADS`` lists them).
      num_labels: classification outputs (1 = regression); default: the checkpoint's.
      labels: label names in id order (implies num_labels).
      dtype: compute dtype; ``param_dtype``: storage dtype.
      seed: initialises head weights the checkpoint lacks.
      new_heads: False refuses a checkpoint that lacks the head's weights (for inference).
      config_overrides: other architecture config fields (e.g. ``hidden_dropout_prob=0.0``).

    Returns ``(model, params)``.
    """
    folder = resolve(name_or_path)
    overrides = dict(config_overrides)
    if labels is not None:
        overrides["labels"] = tuple(str(label) for label in labels)
    elif num_labels is not None:
        current = load_config(folder).labels
        if len(current) != num_labels:
            overrides["labels"] = tuple(f"LABEL_{i}" for i in range(num_labels))
    overrides["dtype"] = jnp.dtype(dtype).name
    overrides["param_dtype"] = jnp.dtype(param_dtype).name
    config = load_config(folder, **overrides)
    model = families.of_config(config).build(config, head)
    params = load_params(folder, model, seed=seed, new_heads=new_heads)
    return model, params


def load_params(folder: str | os.PathLike, model: nn.Module, *, seed: int = 0,
                new_heads: bool = True) -> Any:
    """Parameters for ``model`` from the weights in ``folder`` (missing heads initialised)."""
    loaded = pretrained_weights(folder, model, new_heads=new_heads)
    target = traverse_util.flatten_dict(abstract_params(model))
    if len(loaded) < len(target):
        params = traverse_util.flatten_dict(init_params(model, jax.random.key(seed)))
        params.update({path: jnp.asarray(value) for path, value in loaded.items()})
    else:
        params = {path: jnp.asarray(value) for path, value in loaded.items()}
    return traverse_util.unflatten_dict(params)


def to_state_dict(model: nn.Module, params: Any) -> dict[str, np.ndarray]:
    """HF weight names -> float arrays in the layout of the family's matching HF class."""
    spec = families.of_model(model)
    trunk = spec.trunk + "."
    bare = spec.head_of(model) is None
    state = {}
    for path, value in traverse_util.flatten_dict(params).items():
        value = np.asarray(jax.device_get(value), dtype=np.float32)
        if path[-1] == "kernel":
            value = value.T
        name = hf_name(path)
        if bare and name.startswith(trunk):
            name = name[len(trunk):]
        state[name] = np.ascontiguousarray(value)
    return state


def check_finite(params: Any, what: str) -> None:
    """Refuse to write NaN/inf weights anywhere a user would load them from."""
    bad = [
        "/".join(path) for path, value in traverse_util.flatten_dict(params).items()
        if not np.isfinite(np.asarray(jax.device_get(value), np.float32)).all()
    ]
    if bad:
        from jaxtl.errors import NonFiniteError

        raise NonFiniteError(f"refusing to write {what}: non-finite values in {', '.join(bad[:5])}"
                             + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))


def save(model: nn.Module, params: Any, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Write an HF folder (config.json, model.safetensors, tokenizer files when given).

    ``transformers.AutoModel`` and the family's ``*For...`` class for the model's head load it
    and compute the same numbers. Non-finite weights are refused (:class:`NonFiniteError`).
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    spec = families.of_model(model)
    head = spec.head_of(model)
    check_finite(params, f"{out}")
    out.mkdir(parents=True, exist_ok=True)
    hf_config = model.config.to_hf()
    hf_config["architectures"] = [spec.architecture(head, hf_config["model_type"])]
    hf_config["torch_dtype"] = "float32"
    if head == "classification" and model.config.num_labels == 1:
        hf_config["problem_type"] = "regression"
    tmp = out / "model.safetensors.tmp"
    save_file(to_state_dict(model, params), str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
