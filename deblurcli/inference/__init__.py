"""Inference: run a model over an image (tiling, devices and precision land with issue #4)."""

from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def restore_tensor(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Restore ``image`` (N×3×H×W in [0, 1]) with ``model`` in one pass; returns [0, 1]."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return model(image.to(device)).clamp_(0, 1).to(image.device)
