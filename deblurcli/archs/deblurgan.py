"""``deblurgan``: DeblurGAN (Kupyn et al., CVPR 2018, arXiv 1711.07064), seed 002.

Generator: 7×7 conv (64) → two stride-2 3×3 convs (128, 256) → 9 residual blocks with
InstanceNorm, ReLU and dropout 0.5 → two transposed convs (128, 64) → 7×7 conv → tanh, with
the learned residual ``output = clamp(input + G(input), -1, 1)`` in [-1, 1] space.
Critic: the 70×70 PatchGAN (4×4 convs 64-128-256-512-1, InstanceNorm, LeakyReLU 0.2) trained
as a WGAN-GP critic (no sigmoid).

Deviations: the public interface is RGB in [0, 1] (mapped to [-1, 1] inside); inputs of any
size are reflect-padded to a multiple of 4 and cropped back; widths (``ngf``) and the number
of blocks are configurable for tests and CPU training, defaulting to the paper's.
"""

from __future__ import annotations

import torch
from torch import nn

from deblurcli.archs._blocks import ReflectionPad, ResidualBlock, SizeAgnostic, conv_norm_act
from deblurcli.archs._registry import (
    ArchSpec,
    DiscriminatorSpec,
    register_arch,
    register_discriminator,
)


@register_discriminator(
    DiscriminatorSpec(
        name="patchgan",
        title="70×70 PatchGAN critic (DeblurGAN's, no sigmoid)",
        tiny_config={"ndf": 8},
    )
)
class PatchGANCritic(nn.Module):
    """70×70 PatchGAN critic (no sigmoid: WGAN-GP scores), input RGB in [0, 1]."""

    def __init__(self, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(ch, out, 4, stride, 1),
                nn.InstanceNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * 2 - 1)


SPEC = ArchSpec(
    name="deblurgan",
    title="DeblurGAN: ResNet generator (9 blocks) + PatchGAN WGAN-GP critic",
    source="Kupyn et al. 2018, DeblurGAN, arXiv 1711.07064",
    default_config={"ngf": 64, "n_blocks": 9, "dropout": 0.5},
    tiny_config={"ngf": 8, "n_blocks": 2},
    size_multiple=4,
    cpu_train_bf16=True,  # measured: the table in deblurcli/training/precision.py
    tile_overlap=64,
)


@register_arch(SPEC)
class DeblurGANGenerator(SizeAgnostic):
    """DeblurGAN's ResNet generator with the learned residual ``clamp(x + G(x), -1, 1)``.

    Args:
        ngf: channels of the first conv (64 = paper); the body runs at ``4 * ngf``.
        n_blocks: residual blocks in the body (9 = paper).
        dropout: dropout probability inside each residual block (0.5 = paper; active only in
            training mode).

    ``forward(x)`` takes RGB in [0, 1], (N, 3, H, W) of any H×W, and returns the restored
    image of the same shape, in [0, 1]. The WGAN-GP critic, :class:`PatchGANCritic`, is a
    separate module (``create_discriminator("deblurgan")``).
    """

    size_multiple = SPEC.size_multiple

    def __init__(self, ngf: int, n_blocks: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [conv_norm_act(3, ngf, 7)]
        layers += [conv_norm_act(ngf, ngf * 2, 3, stride=2, reflect=False)]
        layers += [conv_norm_act(ngf * 2, ngf * 4, 3, stride=2, reflect=False)]
        layers += [
            ResidualBlock(ngf * 4, norm="instance", dropout=dropout) for _ in range(n_blocks)
        ]
        for cin, cout in ((ngf * 4, ngf * 2), (ngf * 2, ngf)):
            layers += [
                nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        layers += [ReflectionPad(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        signed = x * 2 - 1
        restored = torch.clamp(signed + self.model(signed), -1, 1)
        return (restored + 1) / 2
