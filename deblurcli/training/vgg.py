"""VGG19 feature extractor for perceptual losses, with ImageNet weights or nothing.

A perceptual loss is only meaningful with ImageNet-trained weights. They are taken from
``--vgg-weights PATH`` or from torchvision's file in the torch hub cache; nothing is
downloaded. Without them :func:`load_vgg19` returns None and the caller drops the term
(a random VGG is never passed off as a perceptual loss).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from deblurcli.archs._blocks import ImageNetNormalize
from deblurcli.errors import CheckpointError

# torchvision's vgg19.features indices: conv layers are named convB_I (block B, index I).
_BLOCKS = (2, 2, 4, 4, 4)


def layer_indices() -> dict[str, int]:
    """``{"conv1_1": 0, ..., "conv5_4": 34}``: index of each conv in vgg19.features."""
    names: dict[str, int] = {}
    idx = 0
    for b, n in enumerate(_BLOCKS, start=1):
        for i in range(1, n + 1):
            names[f"conv{b}_{i}"] = idx
            idx += 2  # conv, relu
        idx += 1  # max pool
    return names


def cached_weights_path() -> Path:
    """Where torchvision keeps VGG19's ImageNet weights in the torch hub cache."""
    url = torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def find_weights(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The explicit ``path`` (must exist) or the cached torchvision file, else None."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such VGG19 weights file")
        return path
    cached = cached_weights_path()
    return cached if cached.is_file() else None


class VGGFeatures(nn.Module):
    """Frozen VGG19 up to the deepest requested layer; returns post-ReLU features by name."""

    def __init__(self, features: nn.Sequential, layers: list[str]):
        super().__init__()
        index = layer_indices()
        unknown = [name for name in layers if name not in index]
        if unknown:
            raise ValueError(f"unknown VGG19 layer(s) {unknown}; e.g. conv3_3, conv4_4")
        self.taps = {index[name] + 1: name for name in layers}  # after the ReLU
        self.body = features[: max(self.taps) + 1]
        self.normalize = ImageNetNormalize()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:  # always frozen
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        h = self.normalize(x)
        for i, layer in enumerate(self.body):
            h = layer(h)
            if i in self.taps:
                out[self.taps[i]] = h
        return out


def load_vgg19(
    layers: list[str], weights: str | os.PathLike[str] | None = None
) -> tuple[VGGFeatures | None, str]:
    """VGG19 features at ``layers`` and a description of the weights, or (None, reason)."""
    path = find_weights(weights)
    if path is None:
        return None, f"no VGG19 ImageNet weights (not in {cached_weights_path().parent})"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises many types
        raise CheckpointError(
            f"{path}: not a plain VGG19 state dict ({type(exc).__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a VGG19 state dict")
    # Only the conv trunk: the classifier would add 120M parameters we never use.
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    feat_state = {k.removeprefix("features."): v for k, v in state.items() if "classifier" not in k}
    try:
        features.load_state_dict(feat_state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: not VGG19 weights ({first})") from None
    return VGGFeatures(features, layers), str(path)
