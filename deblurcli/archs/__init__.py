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
    DiscriminatorSpec,
    count_parameters,
    create,
    create_discriminator,
    default_parameter_count,
    get_discriminator_spec,
    get_spec,
    list_archs,
    list_discriminators,
    loading_config,
    model_config,
    register_arch,
    register_discriminator,
    resolve_config,
)

__all__ = [
    "ArchSpec",
    "DiscriminatorSpec",
    "count_parameters",
    "create",
    "create_discriminator",
    "default_parameter_count",
    "get_discriminator_spec",
    "get_spec",
    "list_archs",
    "list_discriminators",
    "loading_config",
    "model_config",
    "register_arch",
    "register_discriminator",
    "resolve_config",
]
