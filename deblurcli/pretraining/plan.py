"""The plan of the pretrained models: ``[defaults]``, ``[arch.NAME]`` and ``[cohort]`` tables.

The plan file (``scripts/pretrained_plan.toml``) is declarative; an unknown key is an error,
so a typo never silently trains with a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from deblurcli._toml import tomllib
from deblurcli.archs import model_config, resolve_config

_ARCH_KEYS = {"config", "config_null", "steps", "lr", "loss", "schedule", "adversarial"}
_ARCH_KEYS |= {"n_critic", "init", "freeze_bn"}
_DEFAULT_KEYS = {
    "degrade",
    "degrade_options",
    "patch_size",
    "batch_size",
    "threads",
    "precision",
    "seed",
    "val_every",
    "ckpt_every",
    "budget_minutes",
    "license",
    "default_model",
    "vgg_weights",
}
_COHORT_KEYS = {
    "patch_size",
    "batch_size",
    "workers",
    "warmup",
    "checkpoint_minutes",
    "echo",
    "val_crops",
    "first_degrade",
    "first_share",
}


class PlanError(ValueError):
    """The plan file is malformed."""


def _read(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def load_plan(path: Path) -> dict[str, dict[str, Any]]:
    """Per-arch settings: ``[defaults]`` merged under each ``[arch.NAME]`` table."""
    data = _read(path)
    defaults = data.get("defaults", {})
    unknown = set(defaults) - _DEFAULT_KEYS
    if unknown:
        raise PlanError(f"{path}: unknown [defaults] key(s) {', '.join(sorted(unknown))}")
    plans: dict[str, dict[str, Any]] = {}
    for arch, table in data.get("arch", {}).items():
        unknown = set(table) - _ARCH_KEYS - _DEFAULT_KEYS
        if unknown:
            raise PlanError(f"{path}: [arch.{arch}] unknown key(s) {', '.join(sorted(unknown))}")
        plan = copy.deepcopy(defaults)
        plan.update(copy.deepcopy(table))
        plan.setdefault("config", {})
        plan["config"].update({k: None for k in plan.pop("config_null", [])})
        plans[arch] = plan
    if not plans:
        raise PlanError(f"{path}: no [arch.NAME] tables")
    return plans


def load_cohort(path: Path) -> dict[str, Any]:
    """The plan's ``[cohort]`` table: settings of the time-boxed run of every arch at once."""
    table = _read(path).get("cohort", {})
    unknown = set(table) - _COHORT_KEYS
    if unknown:
        raise PlanError(f"{path}: unknown [cohort] key(s) {', '.join(sorted(unknown))}")
    return table


def planned_model(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """The model a plan's ``config`` builds: resolved, without its init-only keys."""
    return model_config(arch, resolve_config(arch, **config))
