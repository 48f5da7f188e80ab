"""``skipae``: fully convolutional encoder-decoder with skip connections + discriminator.

Source: seed 000, a reimplementation of "Research of Image Deblurring Based on the Deep
Neural Network" (IEEE 2018, doc. 8405801) trained on CelebA blurred half with motion and half
with Gaussian blur. Channel plan (kept exactly):

* encoder 3→64 (E1) → 128 stride 2 (E2) → 256 (E3) → 512 stride 2 (E4) → 512;
* decoder ConvTranspose2d 512→128, concat E4 → 640→128 (×2), concat E3 → 384→64, concat E2
  → 192→32 (×2) → 32→16, concat E1 → 80→3.

Deviations: the seed's table uses unpadded convolutions that only fit 64×64 inputs
(62→30→28→13→11 and back). We pad every conv ("same" size; stride-2 layers halve exactly and
the ×2 transposed convs use kernel 4) so any H×W padded to a multiple of 4 works, with the
same channel plan and skip concatenations. LeakyReLU(0.2) follows every layer but the last
(the seed does not say); the output adds the input (global residual, ``residual=True``) which
trains much faster; the seed's ImageNet normalisation is done inside the model. The seed's
discriminator is not described: ours is a DCGAN-style strided conv stack with a global pooled
score. ``width`` scales all channels (64 = seed).
"""

from __future__ import annotations

import torch
from torch import nn

from deblurcli.archs._blocks import ImageNetNormalize, SizeAgnostic
from deblurcli.archs._registry import (
    ArchSpec,
    DiscriminatorSpec,
    register_arch,
    register_discriminator,
)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


@register_discriminator(
    DiscriminatorSpec(
        name="dcgan",
        title="DCGAN-style strided conv discriminator with a pooled score (skipae's)",
        tiny_config={"width": 8},
    )
)
class SkipAEDiscriminator(nn.Module):
    """Strided conv stack → global average → one realness score per image (input in [0, 1])."""

    def __init__(self, width: int = 64, n_layers: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        ch_in = 3
        for i in range(n_layers):
            ch_out = width * 2**i
            layers += [nn.Conv2d(ch_in, ch_out, 4, 2, 1)]
            if i > 0:
                layers.append(nn.BatchNorm2d(ch_out))
            layers.append(_act())
            ch_in = ch_out
        self.features = nn.Sequential(*layers)
        self.score = nn.Conv2d(ch_in, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x * 2 - 1)).mean(dim=(1, 2, 3))


SPEC = ArchSpec(
    name="skipae",
    title="Fully convolutional encoder-decoder with skips + discriminator",
    source="Research of Image Deblurring Based on the Deep Neural Network (IEEE 2018)",
    default_config={"width": 64, "residual": True},
    tiny_config={"width": 4},
    size_multiple=4,
    cpu_train_bf16=True,  # measured: the table in deblurcli/training/precision.py
    cpu_train_channels_last=True,
    tile_overlap=32,
)


@register_arch(SPEC)
class SkipAE(SizeAgnostic):
    """Encoder-decoder with skip concatenations (the seed's channel plan, padded convs).

    Args:
        width: scales every channel count; 64 is the seed's plan (64-128-256-512-512).
        residual: add the input to the output (global residual); False predicts the image
            itself, as the seed does.

    ``forward(x)`` takes RGB in [0, 1], (N, 3, H, W) of any H×W, and returns the restored
    image of the same shape, not clamped to [0, 1]. Its critic, :class:`SkipAEDiscriminator`,
    is a separate module (``create_discriminator("skipae")``).
    """

    size_multiple = SPEC.size_multiple

    def __init__(self, width: int, residual: bool):
        super().__init__()

        def c(n: int) -> int:  # seed channel count scaled by width
            return max(1, n * width // 64)

        def enc(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), _act())

        def dec(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.ConvTranspose2d(cin, cout, k, stride, (k - stride) // 2), _act()
            )

        self.residual = residual
        self.normalize = ImageNetNormalize()
        self.e1 = enc(3, c(64), 1)
        self.e2 = enc(c(64), c(128), 2)
        self.e3 = enc(c(128), c(256), 1)
        self.e4 = enc(c(256), c(512), 2)
        self.bottleneck = enc(c(512), c(512), 1)
        self.d1 = dec(c(512), c(128), 3, 1)
        self.d2 = dec(c(128) + c(512), c(128), 4, 2)
        self.d3 = dec(c(128) + c(256), c(64), 3, 1)
        self.d4 = dec(c(64) + c(128), c(32), 4, 2)
        self.d5 = dec(c(32), c(16), 3, 1)
        self.out = nn.Conv2d(c(16) + c(64), 3, 3, 1, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        e1 = self.e1(z)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        e4 = self.e4(e3)
        d = self.d1(self.bottleneck(e4))
        d = self.d2(torch.cat([d, e4], 1))
        d = self.d3(torch.cat([d, e3], 1))
        d = self.d4(torch.cat([d, e2], 1))
        d = self.d5(d)
        y = self.out(torch.cat([d, e1], 1)) * self.normalize.std  # back to [0, 1] units
        return x + y if self.residual else y + self.normalize.mean
