"""deblurcli: image deblurring with six published architectures.

Python API (the CLI is a thin layer over it)::

    from deblurcli import create_model, load_model, list_archs
    model = load_model("runs/edgenet/model.safetensors")
"""

from deblurcli.archs import create as create_model
from deblurcli.archs import get_spec, list_archs
from deblurcli.degradations import degrade, synthesize_dataset
from deblurcli.errors import DeblurError
from deblurcli.evaluation import EvalOptions, evaluate
from deblurcli.imageio import read_image, write_image
from deblurcli.inference import restore_tensor
from deblurcli.inference.batch import RestoreSummary, restore
from deblurcli.metrics import psnr, ssim
from deblurcli.weights import load_checkpoint, save_checkpoint
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
    "load_checkpoint",
    "load_model",
    "psnr",
    "read_image",
    "restore",
    "restore_tensor",
    "RestoreSummary",
    "save_checkpoint",
    "ssim",
    "synthesize_dataset",
    "write_image",
]
