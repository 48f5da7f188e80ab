"""``transformnet``: the Image Transform Net of Johnson et al. 2016 (arXiv 1603.08155), seed 003.

Source: 9×9 conv 32 → stride-2 3×3 convs 64 and 128 → 5 residual blocks (128) → two
fractionally-strided (×2) 3×3 convs 64 and 32 → 9×9 conv to 3, InstanceNorm + ReLU after
every conv but the last. Seed 003 used it for motion deblurring on GoPro with MSE/MAE.

Deviations: a global skip (``output = input + net(input)``) replaces the style-transfer tanh
output so the net learns the residual; reflect padding instead of zero padding; inputs of any
size are padded to a multiple of 4. ``base`` scales all widths (32 = paper).
"""

from __future__ import annotations

import torch
from torch import nn

from deblurcli.archs._blocks import ReflectionPad, ResidualBlock, SizeAgnostic, conv_norm_act
from deblurcli.archs._registry import ArchSpec, register_arch

SPEC = ArchSpec(
    name="transformnet",
    title="Image Transform Net (Johnson et al.) with global skip",
    source="Johnson et al. 2016, arXiv 1603.08155",
    default_config={"base": 32, "n_blocks": 5},
    tiny_config={"base": 4, "n_blocks": 1},
    size_multiple=4,
    cpu_train_bf16=True,  # measured: the table in deblurcli/training/precision.py
    tile_overlap=64,
)


@register_arch(SPEC)
class TransformNet(SizeAgnostic):
    """Johnson et al.'s Image Transform Net with a global skip (``x + net(x)``).

    Args:
        base: channels of the first conv (32 = paper); the residual body runs at ``4 * base``.
        n_blocks: residual blocks in the body (5 = paper).

    ``forward(x)`` takes RGB in [0, 1], (N, 3, H, W) of any H×W, and returns the restored
    image of the same shape, not clamped to [0, 1].
    """

    size_multiple = SPEC.size_multiple

    def __init__(self, base: int, n_blocks: int):
        super().__init__()
        b = base
        layers: list[nn.Module] = [
            conv_norm_act(3, b, 9),
            conv_norm_act(b, b * 2, 3, stride=2),
            conv_norm_act(b * 2, b * 4, 3, stride=2),
        ]
        layers += [ResidualBlock(b * 4) for _ in range(n_blocks)]
        for cin, cout in ((b * 4, b * 2), (b * 2, b)):
            layers += [
                nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        layers += [ReflectionPad(4), nn.Conv2d(b, 3, 9)]
        self.net = nn.Sequential(*layers)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)
