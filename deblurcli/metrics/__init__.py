"""Image-quality metrics computed in torch, batched, on whatever device the tensors are on.

Both metrics take ``(x, y, data_range=1.0, crop_border=0, y_channel=False)`` (see
:class:`~deblurcli.metrics._util.PairMetric`) and return one float64 value per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deblurcli.metrics._util import PairMetric, prepare_pair, rgb_to_y
from deblurcli.metrics.ssim import ssim


@PairMetric
def psnr(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """Per-image PSNR in dB of N×C×H×W (or C×H×W) tensors; identical images give ``inf``."""
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


__all__ = ["prepare_pair", "psnr", "rgb_to_y", "ssim"]
