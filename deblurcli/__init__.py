"""deblurcli: image deblurring with six published architectures.

Python API (the CLI is a thin layer over it)::

    from deblurcli import load_model, restore, synthesize_dataset, train, TrainConfig
    model = load_model("runs/edgenet/model.safetensors")
    summary = restore(["photos/"], model=model, output="restored/")
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module, attribute). Loaded on first use, so that importing a light submodule
# (``deblurcli.data.photo_pool``, ``deblurcli.errors``) does not pull in torch through here.
_API = {
    "DeblurError": ("deblurcli.errors", "DeblurError"),
    "EvalOptions": ("deblurcli.evaluation", "EvalOptions"),
    "create_model": ("deblurcli.archs", "create"),
    "degrade": ("deblurcli.degradations", "degrade"),
    "evaluate": ("deblurcli.evaluation", "evaluate"),
    "get_spec": ("deblurcli.archs", "get_spec"),
    "list_archs": ("deblurcli.archs", "list_archs"),
    "list_pretrained": ("deblurcli.weights", "list_pretrained"),
    "load_checkpoint": ("deblurcli.weights", "load_checkpoint"),
    "load_model": ("deblurcli.weights.resolve", "load_model"),
    "psnr": ("deblurcli.metrics", "psnr"),
    "read_image": ("deblurcli.imageio", "read_image"),
    "resolve_weights": ("deblurcli.weights", "resolve_weights"),
    "restore": ("deblurcli.inference.batch", "restore"),
    "restore_tensor": ("deblurcli.inference", "restore_tensor"),
    "RestoreSummary": ("deblurcli.inference.batch", "RestoreSummary"),
    "save_checkpoint": ("deblurcli.weights", "save_checkpoint"),
    "ssim": ("deblurcli.metrics", "ssim"),
    "synthesize_dataset": ("deblurcli.degradations", "synthesize_dataset"),
    # The trainer pulls in losses, VGG and DDP plumbing.
    "train": ("deblurcli.training", "train"),
    "TrainConfig": ("deblurcli.training", "TrainConfig"),
    "write_image": ("deblurcli.imageio", "write_image"),
}

__version__ = "0.1.0"
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'deblurcli' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
