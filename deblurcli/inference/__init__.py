"""Inference: the tiling engine, device/precision policy and the batch ``restore`` API.

from deblurcli.inference import restore_tensor
out = restore_tensor(model, image, tile="auto")  # N×C×H×W in [0, 1] → same shape
"""

from deblurcli.inference.batch import RestoreSummary, restore
from deblurcli.inference.device import pick_device, resolve_precision
from deblurcli.inference.engine import restore_tensor

__all__ = ["RestoreSummary", "pick_device", "resolve_precision", "restore", "restore_tensor"]
