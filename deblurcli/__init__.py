"""deblurcli: image deblurring with six published architectures.

Python API (the CLI is a thin layer over it)::

    from deblurcli import load_model, restore, synthesize_dataset, train, TrainConfig
    model = load_model("runs/edgenet/model.safetensors")
    summary = restore(["photos/"], model=model, output="restored/")
"""

from typing import Any

from deblurcli.archs import create as create_model
from deblurcli.archs import get_spec, list_archs
from deblurcli.degradations import degrade, synthesize_dataset
from deblurcli.errors import DeblurError
from deblurcli.evaluation import EvalOptions, evaluate
from deblurcli.imageio import read_image, write_image
from deblurcli.inference import restore_tensor
from deblurcli.inference.batch import RestoreSummary, restore
from deblurcli.metrics import psnr, ssim
from deblurcli.weights import list_pretrained, load_checkpoint, resolve_weights, save_checkpoint
from deblurcli.weights.resolve import load_model

__version__ = "0.1.0"
__all__ = [
    "DeblurError",
    "EvalOptions",
    "create_model",
    "degrade",
    "evaluate",
    "get_spec",
    "list_archs",
    "list_pretrained",
    "load_checkpoint",
    "load_model",
    "psnr",
    "read_image",
    "resolve_weights",
    "restore",
    "restore_tensor",
    "RestoreSummary",
    "save_checkpoint",
    "ssim",
    "synthesize_dataset",
    "train",
    "TrainConfig",
    "write_image",
]


def __getattr__(name: str) -> Any:
    # The trainer pulls in losses, VGG and DDP plumbing; load it only when someone trains.
    if name in ("train", "TrainConfig"):
        from deblurcli import training

        return getattr(training, name)
    raise AttributeError(f"module 'deblurcli' has no attribute {name!r}")
