"""Warm starts: train from a pretrained model (``--init MODEL``), and freeze parts of a model.

MODEL is anything ``deblur restore --model`` accepts, resolved (and sha256-checked) by
:mod:`deblurcli.weights.resolve`. The run records where its weights came from as a *lineage*:
a JSON object with the MODEL value, the file, its sha256, the arch and config, the manifest
name when there is one, and the ``parent`` lineage stored in that file when it was itself
fine-tuned. It goes into the run's ``config.json``, the training state and the metadata of
every exported checkpoint (key :data:`INIT_KEY`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deblurcli.archs import loading_config
from deblurcli.errors import UsageError
from deblurcli.weights.checkpoint import read_metadata
from deblurcli.weights.resolve import resolve_model

INIT_KEY = "deblurcli.init"


@dataclass(frozen=True)
class InitSource:
    """The weights a run starts from (fp32, on the CPU) and their lineage."""

    lineage: dict[str, Any]
    state: dict[str, torch.Tensor]

    @property
    def arch(self) -> str:
        return self.lineage["arch"]


def load_init(value: str | os.PathLike[str]) -> InitSource:
    """Resolve and load MODEL as ``restore --model`` does; its weights become fp32."""
    resolved = resolve_model(value)
    model = resolved.model
    lineage: dict[str, Any] = {
        "model": os.fspath(value),
        "arch": model.arch_name,
        "config": dict(model.arch_config),
        "file": str(resolved.path.resolve()),
        "sha256": resolved.sha256(),
    }
    if resolved.entry is not None:
        lineage["manifest_name"] = resolved.entry.name
    parent = _stored_lineage(resolved.path)
    if parent is not None:
        lineage["parent"] = parent
    return InitSource(lineage, {k: v.detach() for k, v in model.state_dict().items()})


def _stored_lineage(path: os.PathLike[str]) -> dict[str, Any] | None:
    """The lineage a fine-tuned checkpoint carries in its metadata (None for other files)."""
    if os.fspath(path).endswith((".pth", ".pt")):
        return None
    try:
        value = json.loads(read_metadata(path).get(INIT_KEY, "null"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def check_arch(source: InitSource, arch: str | None, value: str) -> str:
    """The run's arch: MODEL's; an ``--arch`` that names another is a usage error."""
    if arch is not None and arch != source.arch:
        raise UsageError(
            f"{{init}} {value} is a {source.arch} model but {{arch}} says {arch}; "
            f"drop {{arch}} or pass {{arch}} {source.arch}",
            mentions=("init", "arch"),
        )
    return source.arch


def init_config(arch: str, base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The model config of a warm-started run: MODEL's config with ``--config`` overrides,
    init-only keys off (MODEL's weights replace that init)."""
    return loading_config(arch, {**base, **overrides})


def load_init_weights(model: nn.Module, source: InitSource, overrides: dict[str, Any]) -> None:
    """Copy MODEL's weights into ``model``; an override that changed a shape is refused."""
    target = model.state_dict()
    for name in [*target, *(k for k in source.state if k not in target)]:
        old, new = source.state.get(name), target.get(name)
        if old is None or new is None or old.shape != new.shape:
            given = " ".join(f"{k}={v!r}" for k, v in overrides.items()) or "(none)"
            raise UsageError(
                f"{{config}} {given} changes parameter {name} of the {{init}} model "
                f"({_shape(old)} -> {_shape(new)}); only overrides that keep every shape apply",
                mentions=("config", "init"),
            )
    model.load_state_dict(source.state)


def _shape(t: torch.Tensor | None) -> str:
    return "absent" if t is None else "x".join(map(str, t.shape)) or "scalar"


def freeze(model: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Module]:
    """Stop training the parameters whose names start with a prefix.

    Returns the modules that lie wholly under a prefix: the trainer keeps them in eval mode,
    so their batch-norm statistics stay frozen too (and their dropout is off).
    """
    if not prefixes:
        return []
    prefixes = tuple(prefixes)
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise UsageError(
                f"{prefix}: no parameter of {model.arch_name} starts with it "
                f"(top-level names: {', '.join(tops)})",
                option="freeze",
            )
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(
            f"{' '.join(prefixes)} freezes every parameter; nothing to train", option="freeze"
        )
    return [m for n, m in model.named_modules() if n and f"{n}.".startswith(prefixes)]
