"""Image-quality metrics computed in torch, batched, on whatever device the tensors are on."""

from __future__ import annotations

import torch
from torch import Tensor

# ITU-R BT.601 luma as BasicSR and MATLAB's rgb2ycbcr compute it, for images in [0, 1].
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0


def rgb_to_y(image: Tensor) -> Tensor:
    """N×3×H×W RGB in [0, 1] → N×1×H×W Y (studio range, 16/255..235/255)."""
    r, g, b = image.unbind(dim=1)
    y = _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b + _Y_OFFSET
    return y.unsqueeze(1)


def prepare_pair(
    x: Tensor, y: Tensor, crop_border: int = 0, y_channel: bool = False
) -> tuple[Tensor, Tensor]:
    """Apply the BasicSR conventions (crop border, Y channel) and promote to float64."""
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    x, y = x.double(), y.double()
    if y_channel and x.shape[1] == 3:
        x, y = rgb_to_y(x), rgb_to_y(y)
    if crop_border:
        c = crop_border
        x, y = x[..., c:-c, c:-c], y[..., c:-c, c:-c]
    return x, y


def psnr(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    crop_border: int = 0,
    y_channel: bool = False,
) -> Tensor:
    """Per-image PSNR in dB of N×C×H×W (or C×H×W) tensors; identical images give ``inf``."""
    x, y = prepare_pair(x, y, crop_border, y_channel)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


from deblurcli.metrics.ssim import ssim  # noqa: E402 (ssim builds on prepare_pair above)

__all__ = ["prepare_pair", "psnr", "rgb_to_y", "ssim"]
