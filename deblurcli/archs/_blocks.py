"""Building blocks shared by several architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x`` (N,C,H,W) at the bottom/right to a multiple of ``multiple``.

    Reflect padding avoids the dark borders zero padding leaves; it needs the pad to be smaller
    than the side, so tiny inputs fall back to replicate padding.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (h, w)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (h, w)


class SizeAgnostic(nn.Module):
    """Base class: pads the input to ``size_multiple``, runs :meth:`forward_padded`, crops back.

    Every registered model takes RGB in [0, 1] of any H×W and returns the same shape.
    """

    size_multiple: int = 1

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, (h, w) = pad_to_multiple(x, self.size_multiple)
        return self.forward_padded(padded)[..., :h, :w]


class ImageNetNormalize(nn.Module):
    """Maps [0, 1] RGB to ImageNet-standardised values and back (buffers, not weights)."""

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_norm_act(
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    stride: int = 1,
    norm: str = "instance",
    act: str = "relu",
    reflect: bool = True,
) -> nn.Sequential:
    """Conv (reflect padded, so borders are not darkened) → optional norm → activation."""
    pad = kernel_size // 2
    layers: list[nn.Module] = []
    if reflect and pad:
        layers.append(ReflectionPad(pad))
        pad = 0
    layers.append(nn.Conv2d(in_ch, out_ch, kernel_size, stride, pad, bias=norm != "batch"))
    layers += _norm(norm, out_ch) + _act(act)
    return nn.Sequential(*layers)


class ReflectionPad(nn.ReflectionPad2d):
    """Reflection padding that keeps its input's dtype under autocast.

    Autocast lists reflection padding as an fp32 op, so in bf16 every padded activation would
    be upcast and the next conv would cast it back: two full copies per conv, about a third of
    a bf16 CPU forward. Padding only copies values, so this changes no output bit.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x)


def _norm(kind: str, ch: int) -> list[nn.Module]:
    if kind == "instance":
        return [nn.InstanceNorm2d(ch, affine=False)]
    if kind == "batch":
        return [nn.BatchNorm2d(ch)]
    if kind == "none":
        return []
    raise ValueError(f"unknown norm {kind!r}")


def _act(kind: str) -> list[nn.Module]:
    if kind == "relu":
        return [nn.ReLU(inplace=True)]
    if kind == "lrelu":
        return [nn.LeakyReLU(0.2, inplace=True)]
    if kind == "none":
        return []
    raise ValueError(f"unknown activation {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3×3 convs with a skip: x + body(x). Optional norm and dropout between the convs."""

    def __init__(self, ch: int, norm: str = "instance", dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [conv_norm_act(ch, ch, 3, norm=norm, act="relu")]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(conv_norm_act(ch, ch, 3, norm=norm, act="none"))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConv(nn.Module):
    """Nearest ×2 upsampling then a conv: avoids transposed-conv checkerboards."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, norm: str = "instance"):
        super().__init__()
        self.conv = conv_norm_act(in_ch, out_ch, kernel_size, norm=norm, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
