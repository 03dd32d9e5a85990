"""Encoder families behind one seam: each family module defines its config, its linen modules
(with Hugging Face parameter names) and one :class:`FamilySpec`; everything else in jaxtl (HF
conversion, heads, optimizer depth, sharding, CLI) reads the spec and never names a family.

    spec = families.for_model_type("bert")          # from config.json's model_type
    model = spec.build(config, head="classification")

Adding a family is one new module here that calls :func:`register`, plus its tests.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from jaxtl.errors import ConfigError

# Family modules, imported on first use of the registry.
FAMILY_MODULES = ("bert", "albert", "distilbert", "electra", "roberta")


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What the rest of jaxtl needs to know about one encoder family."""

    name: str  # "bert"
    model_types: tuple[str, ...]  # HF config.json model_type values this family serves
    config_cls: type  # frozen dataclass with from_hf(hf, source, **overrides) / to_hf()
    # The trunk's name: the top-level key of its parameters and the HF weight-name prefix
    # ("bert" -> "bert.encoder.layer.0...").
    trunk: str
    # head name (None: the bare trunk) -> (linen module class, HF architecture class name).
    models: dict[str | None, tuple[type, str]]
    # HF weight-name prefixes of head weights; every other weight belongs to the trunk.
    head_prefixes: tuple[str, ...]
    # depth of a parameter path for freezing and layer-wise lr decay: 0 embeddings, i+1 for
    # layer i, num_layers+1 for pooler and heads.
    layer_depth: Callable[[tuple[str, ...], int], int]
    # Trunk weights a checkpoint may lack and that are then newly initialised (e.g. the pooler).
    optional_prefixes: tuple[str, ...] = ()
    # Weights that carry no information (buffers, copies of tied weights).
    ignored: tuple[str, ...] = ()
    # Published sizes for from-scratch models: name -> architecture overrides.
    presets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # What the "pretraining" head returns: BERT's has an NSP head, MLM-only families (DistilBERT,
    # RoBERTa, ...) return just mlm_logits, and pretraining them needs data.nsp: false.
    pretraining_outputs: tuple[str, ...] = ("mlm_logits", "nsp_logits")
    # For the heads every family shares (jaxtl.heads with a generic `module`, e.g. token
    # classification): (config, name) -> the trunk module, called as trunk(input_ids,
    # attention_mask, token_type_ids, deterministic, position_ids) -> hidden [B, L, D] (or
    # (hidden, pooled)); and the HF class-name prefix ("Bert" -> "BertForTokenClassification").
    trunk_module: Callable[..., Any] | None = None
    hf_prefix: str = ""
    # A family serving several model_types whose HF classes are named apart (RoBERTa: XLMRoberta*,
    # Camembert*): model_type -> head -> HF architecture name, where it differs from `models`'.
    architectures_by_model_type: dict[str, dict[str | None, str]] = dataclasses.field(
        default_factory=dict)

    # config -> the position id of a sequence's first token (RoBERTa counts from pad_token_id + 1);
    # packed rows (several examples in one row) restart every example's positions there.
    first_position: Callable[[Any], int] = lambda config: 0

    def _generic(self, head):
        """The registry's shared head ``head`` if this family can build it, else None."""
        if head in self.models or self.trunk_module is None:
            return None
        from jaxtl import heads

        spec = heads.HEADS.get(head)
        return spec if spec is not None and spec.module is not None else None

    @property
    def heads(self) -> tuple[str | None, ...]:
        from jaxtl import heads

        return tuple(self.models) + tuple(h for h in heads.HEADS if self._generic(h) is not None)

    def build(self, config, head: str | None = None):
        """The linen module for ``head`` on this family's trunk."""
        if head in self.models:
            return self.models[head][0](config)
        generic = self._generic(head)
        if generic is None:
            raise ConfigError(
                f"head={head!r} is not available for {self.name}; use one of "
                f"{', '.join(str(h) for h in self.heads)}"
            )
        return generic.module(config, trunk=self.trunk_module, trunk_name=self.trunk)

    def architecture(self, head: str | None, model_type: str | None = None) -> str:
        """The HF class name of ``head`` (for ``model_type``, when the family serves several)."""
        override = self.architectures_by_model_type.get(model_type, {}).get(head)
        if override is not None:
            return override
        if head in self.models:
            return self.models[head][1]
        return self.hf_prefix + self._generic(head).hf_suffix

    def head_of(self, model) -> str | None:
        for head, (cls, _) in self.models.items():
            if type(model) is cls:
                return head
        for head in self.heads:
            generic = self._generic(head)
            if generic is not None and type(model) is generic.module:
                return head
        raise TypeError(f"{type(model).__name__} is not a {self.name} model")

    def preset(self, size: str, **overrides):
        """A published size by name, e.g. ``tiny`` ... ``large``."""
        if size not in self.presets:
            raise ConfigError(f"model size {size!r} is unknown for {self.name}; use one of "
                              f"{', '.join(self.presets)}")
        return self.config_cls(**{**self.presets[size], **overrides})


_REGISTRY: dict[str, FamilySpec] = {}


def register(spec: FamilySpec) -> FamilySpec:
    _REGISTRY[spec.name] = spec
    return spec


def _load_all() -> dict[str, FamilySpec]:
    for module in FAMILY_MODULES:
        importlib.import_module(f"jaxtl.families.{module}")
    return _REGISTRY


def names() -> tuple[str, ...]:
    return tuple(_load_all())


def get(name: str) -> FamilySpec:
    specs = _load_all()
    if name not in specs:
        raise ConfigError(f"model family {name!r} is unknown; use one of {', '.join(specs)}")
    return specs[name]


def for_model_type(model_type: str, source: str = "config.json") -> FamilySpec:
    """The family serving an HF ``model_type``; unknown types are one clear error."""
    for spec in _load_all().values():
        if model_type in spec.model_types:
            return spec
    served = sorted(t for s in _REGISTRY.values() for t in s.model_types)
    raise ConfigError(f"{source}: model_type {model_type!r} is not supported; jaxtl loads "
                      f"{', '.join(served)}")


def of_config(config) -> FamilySpec:
    """The family whose config class ``config`` is."""
    for spec in _load_all().values():
        if isinstance(config, spec.config_cls):
            return spec
    raise TypeError(f"{type(config).__name__} is not a registered family config")


def of_model(model) -> FamilySpec:
    return of_config(model.config)


def of_params(params) -> FamilySpec:
    """The family whose trunk is a top-level key of ``params`` (every jaxtl model has one)."""
    for spec in _load_all().values():
        if spec.trunk in params:
            return spec
    raise ConfigError(f"no registered family's trunk among the parameters {sorted(params)}")


def build(config, head: str | None = None):
    """The model of ``config``'s family for ``head`` (None: the bare trunk)."""
    return of_config(config).build(config, head)


def head_of(model) -> str | None:
    return of_model(model).head_of(model)


def for_architecture(architecture: str) -> tuple[FamilySpec, str | None] | None:
    """``(family, head)`` of an HF architecture class name (e.g. ``BertForPreTraining``)."""
    for spec in _load_all().values():
        for head in spec.heads:
            if spec.architecture(head) == architecture:
                return spec, head
        for by_head in spec.architectures_by_model_type.values():
            for head, arch in by_head.items():
                if arch == architecture:
                    return spec, head
    return None
