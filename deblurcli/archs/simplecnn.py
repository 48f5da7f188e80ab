"""``simplecnn``: the 7-conv residual CNN of seed 004 ("Image Deblurring Network", DeblurNet).

Source: seven same-padded 3×3 convolutions 3→64→128→256→256→128→64→3 with tanh between
them; the output is ``sigmoid(features + input)``. 1,331,459 parameters at the seed's widths.
Trained with MSE ×1.0 + VGG19 perceptual (conv4_4) ×0.1.

Deviations: none in the default network. Widths are configurable (``widths``) so tests and
CPU training can use a narrower net; the default is the seed's. ``logit_residual=True`` (off by
default; on in the shipped pretrained config) adds the input in logit space,
``sigmoid(features + logit(input))``, so an untrained net starts as the identity: with the
seed's ``sigmoid(features + input)`` it starts as ``sigmoid(input)`` (a grey, low-contrast
image) and spent a whole short CPU budget learning to undo that (after 800 steps still
1.53 dB below the blurry input on ``deblur eval --benchmark``).
"""

from __future__ import annotations

import torch
from torch import nn

from deblurcli.archs._blocks import SizeAgnostic
from deblurcli.archs._registry import ArchSpec, register_arch

LOGIT_EPS = 1e-3  # inputs are clamped to [eps, 1 - eps] before the logit

SPEC = ArchSpec(
    name="simplecnn",
    title="7-conv residual CNN (tanh, sigmoid output)",
    source="Image Deblurring Network (7-conv CNN, VGG19 loss)",
    default_config={"widths": [64, 128, 256, 256, 128, 64], "logit_residual": False},
    tiny_config={"widths": [8, 8, 8, 8, 8, 8]},
    size_multiple=1,
    cpu_train_bf16=True,  # measured: the table in deblurcli/training/precision.py
    tile_overlap=16,  # receptive field is 15 px
)


@register_arch(SPEC)
class SimpleCNN(SizeAgnostic):
    """Seven 3×3 convs with tanh between them and a sigmoid output around the input.

    Args:
        widths: the hidden conv widths, one per conv but the last (the seed's six:
            64-128-256-256-128-64).
        logit_residual: add the input in logit space, ``sigmoid(features(x) + logit(x))``, so
            an untrained net is the identity; False is the seed's ``sigmoid(features(x) + x)``.

    ``forward(x)`` takes RGB in [0, 1], (N, 3, H, W) of any H×W, and returns the restored
    image of the same shape, in (0, 1).
    """

    size_multiple = SPEC.size_multiple

    def __init__(self, widths: list[int], logit_residual: bool = False):
        super().__init__()
        self.logit_residual = logit_residual
        chans = [3, *widths, 3]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            if i < len(chans) - 2:
                layers.append(nn.Tanh())
        self.features = nn.Sequential(*layers)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.logit(x, eps=LOGIT_EPS) if self.logit_residual else x
        return torch.sigmoid(self.features(x) + skip)
