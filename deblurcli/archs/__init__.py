"""Architectures: one module per published model, all registered in :mod:`._registry`."""

from deblurcli.archs import (  # noqa: F401  (importing registers each architecture)
    deblurgan,
    edgenet,
    resnetencdec,
    simplecnn,
    skipae,
    transformnet,
)
from deblurcli.archs._registry import (
    ArchSpec,
    count_parameters,
    create,
    create_discriminator,
    default_parameter_count,
    get_spec,
    list_archs,
    loading_config,
    model_config,
    register_arch,
    resolve_config,
)

__all__ = [
    "ArchSpec",
    "count_parameters",
    "create",
    "create_discriminator",
    "default_parameter_count",
    "get_spec",
    "list_archs",
    "loading_config",
    "model_config",
    "register_arch",
    "resolve_config",
]
