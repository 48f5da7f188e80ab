"""``simplecnn``: the 7-conv residual CNN of seed 004 ("Image Deblurring Network", DeblurNet).

Source: seven same-padded 3×3 convolutions 3→64→128→256→256→128→64→3 with tanh between
them; the output is ``sigmoid(features + input)``. 1,331,459 parameters at the seed's widths.
Trained with MSE ×1.0 + VGG19 perceptual (conv4_4) ×0.1.

Deviations: none in the network. Widths are configurable (``widths``) so tests and CPU
training can use a narrower net; the default is the seed's.
"""

from __future__ import annotations

import torch
from torch import nn

from deblurcli.archs._blocks import SizeAgnostic
from deblurcli.archs._registry import ArchSpec, register_arch

SPEC = ArchSpec(
    name="simplecnn",
    title="7-conv residual CNN (tanh, sigmoid output)",
    source="seed 004: Image Deblurring Network (MSE + VGG19 perceptual)",
    default_config={"widths": [64, 128, 256, 256, 128, 64]},
    tiny_config={"widths": [8, 8, 8, 8, 8, 8]},
    size_multiple=1,
    tile_overlap=16,  # receptive field is 15 px
    recipe="simplecnn",
)


@register_arch(SPEC)
class SimpleCNN(SizeAgnostic):
    size_multiple = SPEC.size_multiple

    def __init__(self, widths: list[int]):
        super().__init__()
        chans = [3, *widths, 3]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            if i < len(chans) - 2:
                layers.append(nn.Tanh())
        self.features = nn.Sequential(*layers)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.features(x) + x)
