"""``edgenet``: edge-aware deblurring (Fu et al. 2019, arXiv 1907.02282), seed 001.

Source: an HED-like EdgeNet (Xie & Tu 2015: VGG-style stages, a 1×1 side output per stage
upsampled to full size, fused by a 1×1 conv into one edge map), supervised with Canny edges
of the sharp image; and a DeblurNet fed RGB + edge map (4 channels): head conv, strided
downsampling, residual blocks, upsampling blocks and a global skip.

Deviations: the registered model runs both nets end to end (RGB → RGB), and
:meth:`EdgeAwareDeblur.forward_with_edges` also returns the edge logits so training can
supervise them. The seed's GAN-trained EdgeNet variant is not included (the seed found it
unstable). DeblurNet has no normalisation layers (EDSR-style residual blocks) so tiled and
whole-image inference agree; upsampling is nearest ×2 + conv. Widths, stage count and block
count are configurable; the default EdgeNet is HED's 5 VGG16 stages.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deblurcli.archs._blocks import (
    ReflectionPad,
    ResidualBlock,
    SizeAgnostic,
    UpsampleConv,
    conv_norm_act,
)
from deblurcli.archs._registry import ArchSpec, register_arch


def _vgg_stage(cin: int, cout: int, n_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class HEDEdgeNet(nn.Module):
    """VGG-style stages, each with a side output; returns (fused logits, [side logits])."""

    def __init__(self, widths: list[int], convs_per_stage: list[int]):
        super().__init__()
        self.stages = nn.ModuleList()
        self.sides = nn.ModuleList()
        cin = 3
        for width, n in zip(widths, convs_per_stage, strict=True):
            self.stages.append(_vgg_stage(cin, width, n))
            self.sides.append(nn.Conv2d(width, 1, 1))
            cin = width
        self.fuse = nn.Conv2d(len(widths), 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = x.shape[-2:]
        sides = []
        feat = x
        for i, (stage, side) in enumerate(zip(self.stages, self.sides, strict=True)):
            if i > 0:
                feat = F.max_pool2d(feat, 2)
            feat = stage(feat)
            logit = side(feat)
            if i > 0:
                logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
            sides.append(logit)
        return self.fuse(torch.cat(sides, 1)), sides


class DeblurNet(nn.Module):
    """RGB + edge (4 ch) → residual added to the RGB input."""

    def __init__(self, base: int, n_blocks: int):
        super().__init__()
        self.head = nn.Sequential(
            conv_norm_act(4, base, 7, norm="none"),
            conv_norm_act(base, base * 2, 3, stride=2, norm="none"),
            conv_norm_act(base * 2, base * 4, 3, stride=2, norm="none"),
        )
        self.body = nn.Sequential(*[ResidualBlock(base * 4, norm="none") for _ in range(n_blocks)])
        self.up = nn.Sequential(
            UpsampleConv(base * 4, base * 2, norm="none"),
            UpsampleConv(base * 2, base, norm="none"),
        )
        self.tail = nn.Sequential(ReflectionPad(3), nn.Conv2d(base, 3, 7))

    def forward(self, rgb: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        feat = self.head(torch.cat([rgb, edge], 1))
        return rgb + self.tail(self.up(self.body(feat) + feat))


def _size_multiple(config: dict[str, Any]) -> int:
    """EdgeNet pools (stages - 1) times, DeblurNet downsamples twice."""
    return max(2 ** (len(config["edge_widths"]) - 1), 4)


SPEC = ArchSpec(
    name="edgenet",
    title="Edge-aware deblurring: HED-like EdgeNet + DeblurNet (RGB+edge)",
    source="Fu et al. 2019, arXiv 1907.02282",
    default_config={
        "edge_widths": [64, 128, 256, 512, 512],
        "edge_convs": [2, 2, 3, 3, 3],
        "deblur_base": 64,
        "deblur_blocks": 9,
    },
    tiny_config={"edge_widths": [4, 8], "edge_convs": [1, 1], "deblur_base": 4, "deblur_blocks": 1},
    size_multiple=16,
    multiple_rule=_size_multiple,
    cpu_train_bf16=True,  # measured: the table in deblurcli/training/precision.py
    cpu_train_channels_last=True,
    tile_overlap=96,
)


@register_arch(SPEC)
class EdgeAwareDeblur(SizeAgnostic):
    """HED-like EdgeNet feeding its edge map to DeblurNet (RGB + edge → RGB), end to end.

    Args:
        edge_widths: channels of each EdgeNet stage (HED's VGG16: 64-128-256-512-512); the
            stage count sets the padding multiple (``SPEC.multiple_for``).
        edge_convs: 3×3 convs in each stage (same length as ``edge_widths``).
        deblur_base: DeblurNet's first width; its residual body runs at ``4 * deblur_base``.
        deblur_blocks: residual blocks in DeblurNet's body.

    ``forward(x)`` takes RGB in [0, 1], (N, 3, H, W) of any H×W, and returns the restored
    image of the same shape, not clamped to [0, 1]. Training calls :meth:`forward_with_edges`
    instead, which also returns the edge logits to supervise.
    """

    def __init__(
        self, edge_widths: list[int], edge_convs: list[int], deblur_base: int, deblur_blocks: int
    ):
        super().__init__()
        self.size_multiple = SPEC.multiple_for({"edge_widths": edge_widths})
        self.edgenet = HEDEdgeNet(edge_widths, edge_convs)
        self.deblurnet = DeblurNet(deblur_base, deblur_blocks)

    def forward_with_edges(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Restored RGB (N, 3, H, W), fused edge logits (N, 1, H, W) and the list of per-stage
        side logits (each N, 1, H, W); no padding, so H and W must be multiples of
        ``size_multiple`` (training patches are)."""
        fused, sides = self.edgenet(x)
        return self.deblurnet(x, torch.sigmoid(fused)), fused, sides

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_edges(x)[0]
