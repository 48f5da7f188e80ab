"""The architecture registry: the single place that knows the model names.

Each architecture module decorates its model class with :func:`register_arch`, passing an
:class:`ArchSpec` that tells the rest of the tool how to build and run it (default config,
size multiple, safe half precisions, recommended tile overlap). Inspired by timm's
``register_model`` and BasicSR's ``ARCH_REGISTRY``; spandrel's per-architecture descriptors
motivated the size and precision fields.

Discriminators are entries of their own (:func:`register_discriminator`, BasicSR's
``network_d``): an adversarial training recipe names the one it trains against, so the
architectures do not point into ``deblurcli.training``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deblurcli.errors import UnknownArchError


@dataclass(frozen=True)
class ArchSpec:
    """How to build and run one architecture."""

    name: str
    title: str
    source: str
    default_config: dict[str, Any]
    size_multiple: int = 1  # the default config's; multiple_for() gives any config's
    fp16_safe: bool = True
    bf16_safe: bool = True
    tile_overlap: int = 32
    tiny_config: dict[str, Any] = field(default_factory=dict)
    # Config keys that only choose how the weights start (resnetencdec's ImageNet encoder):
    # None turns that init off. Loaded weights replace it, so these keys never tell two models
    # apart, and the tiny config turns them off (tests and --width tiny read no init file).
    init_only_keys: tuple[str, ...] = ()
    # CPU training, as measured (deblurcli/training/precision.py): bf16 autocast (with
    # channels_last) trains it faster on a CPU with native bf16; channels_last pays in fp32 too.
    # Unmeasured archs train in fp32, contiguous.
    cpu_train_bf16: bool = False
    cpu_train_channels_last: bool = False
    # The padding multiple as a function of the full config, when it depends on it (edgenet:
    # one halving per EdgeNet stage); None: always size_multiple.
    multiple_rule: Callable[[dict[str, Any]], int] | None = None

    def __post_init__(self) -> None:
        if self.multiple_for(self.default_config) != self.size_multiple:
            raise ValueError(f"{self.name}: size_multiple disagrees with its multiple_rule")
        unknown = [k for k in self.init_only_keys if k not in self.default_config]
        if unknown:
            raise ValueError(f"{self.name}: init_only_keys {unknown} are not config keys")
        left_on = [k for k in self.init_only_keys if self.tiny_config.get(k, "") is not None]
        if left_on:
            raise ValueError(f"{self.name}: tiny_config must set {left_on} to None")

    def multiple_for(self, config: dict[str, Any]) -> int:
        """The padding multiple of a model built with ``config`` (missing keys: defaults)."""
        if self.multiple_rule is None:
            return self.size_multiple
        return self.multiple_rule({**self.default_config, **config})

    def size_rule(self) -> str:
        if self.size_multiple <= 1:
            return "any H×W"
        return f"any H×W (padded to a multiple of {self.size_multiple})"


@dataclass(frozen=True)
class DiscriminatorSpec:
    """A critic/discriminator that adversarial recipes train against (BasicSR's ``network_d``).

    It is registered under its own name; the training recipe that uses it names it, so an
    architecture knows nothing of how it is trained.
    """

    name: str
    title: str
    tiny_config: dict[str, Any] = field(default_factory=dict)  # for tests and CPU runs


@dataclass(frozen=True)
class _Entry:
    spec: ArchSpec
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, _Entry] = {}
_DISCRIMINATORS: dict[str, tuple[DiscriminatorSpec, Callable[..., nn.Module]]] = {}


def register_arch(spec: ArchSpec) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a model class under ``spec.name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if spec.name in _REGISTRY:
            raise ValueError(f"architecture {spec.name!r} registered twice")
        _REGISTRY[spec.name] = _Entry(spec=spec, builder=cls)
        cls.arch_spec = spec  # type: ignore[attr-defined]
        return cls

    return decorator


def register_discriminator(
    spec: DiscriminatorSpec,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a discriminator class under ``spec.name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if spec.name in _DISCRIMINATORS or spec.name in _REGISTRY:
            raise ValueError(f"discriminator {spec.name!r} registered twice")
        _DISCRIMINATORS[spec.name] = (spec, cls)
        return cls

    return decorator


def list_archs() -> list[str]:
    """Registered architecture names, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``; an unknown name is a one-line user error."""
    try:
        return _REGISTRY[name].spec
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise UnknownArchError(f"unknown architecture {name!r}; known: {known}") from None


def resolve_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The default config of ``name`` updated with ``overrides`` (unknown keys rejected)."""
    spec = get_spec(name)
    config = copy.deepcopy(spec.default_config)
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise UnknownArchError(
            f"{name}: unknown config key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(config))}"
        )
    config.update(overrides)
    return config


def model_config(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without ``name``'s init-only keys: what identifies the model itself."""
    init_only = get_spec(name).init_only_keys
    return {k: v for k, v in config.items() if k not in init_only}


def loading_config(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``name``'s init-only keys turned off (None): for a model whose weights
    are about to be replaced by loaded ones, so no init file is read for nothing."""
    return {**config, **dict.fromkeys(get_spec(name).init_only_keys)}


def create(name: str, **config: Any) -> nn.Module:
    """Build architecture ``name`` with its default config updated by ``config``."""
    full = resolve_config(name, **config)
    model = _REGISTRY[name].builder(**full)
    model.arch_name = name  # type: ignore[assignment]
    model.arch_config = full  # type: ignore[assignment]
    return model


def list_discriminators() -> list[str]:
    """Registered discriminator names, in registration order."""
    return list(_DISCRIMINATORS)


def get_discriminator_spec(name: str) -> DiscriminatorSpec:
    """The :class:`DiscriminatorSpec` of ``name``; an unknown name is a one-line user error."""
    try:
        return _DISCRIMINATORS[name][0]
    except KeyError:
        known = ", ".join(_DISCRIMINATORS)
        raise UnknownArchError(f"unknown discriminator {name!r}; known: {known}") from None


def create_discriminator(name: str, **config: Any) -> nn.Module:
    """Build discriminator ``name`` with its defaults updated by ``config``."""
    get_discriminator_spec(name)
    return _DISCRIMINATORS[name][1](**config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_parameter_count(name: str, **config: Any) -> int:
    """Parameter count of the default config (updated by ``config``), built on the meta device
    (no memory, no I/O)."""
    with torch.device("meta"):
        model = create(name, **config)
    return count_parameters(model)
