"""``resnetencdec``: ResNet encoder + custom decoder (seed 003, "motion_deblur_dl").

Source: seed 003 uses a torchvision ResNet-50 encoder initialised from ImageNet and a decoder
that upsamples back to full resolution, trained on GoPro with MSE/MAE and Adam lr 1e-3.

Our decoder (the seed shows it only as a picture): five stages of bilinear ×2 upsampling, a
concatenation with the encoder feature at that scale (layer3, layer2, layer1, stem, then the
input image itself) and two 3×3 conv + BatchNorm + ReLU; a final 3×3 conv predicts a residual
added to the input. Deviations: the global residual; ImageNet normalisation inside the model;
any input size (padded to a multiple of 32). ``encoder`` may be resnet18/34/50 (50 = seed).
ImageNet weights are used when torchvision's file is already in the torch cache (nothing is
downloaded); otherwise the encoder starts random with a one-line warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from deblurcli.archs._blocks import ImageNetNormalize, SizeAgnostic
from deblurcli.archs._registry import ArchSpec, register_arch

log = logging.getLogger(__name__)

_ENCODERS = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights", [64, 64, 128, 256, 512]),
    "resnet34": (torchvision.models.resnet34, "ResNet34_Weights", [64, 64, 128, 256, 512]),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights", [64, 256, 512, 1024, 2048]),
}


def _cached_imagenet_state(encoder: str) -> dict[str, torch.Tensor] | None:
    """torchvision's ImageNet weights if they are already in the torch hub cache."""
    weights_enum = getattr(torchvision.models, _ENCODERS[encoder][1])
    url = weights_enum.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class _DecoderStage(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(cin + cskip, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], 1))


SPEC = ArchSpec(
    name="resnetencdec",
    title="ResNet encoder + custom U-Net-style decoder",
    source="ResNet-50 encoder (He et al. 2016) + U-Net-style decoder",
    default_config={
        "encoder": "resnet50",
        "decoder_channels": [256, 128, 64, 32, 16],
        "encoder_weights": "imagenet",
    },
    tiny_config={
        "encoder": "resnet18",
        "decoder_channels": [8, 8, 8, 8, 8],
        "encoder_weights": None,
    },
    size_multiple=32,
    cpu_train_bf16=True,  # measured: the table in deblurcli/training/precision.py
    tile_overlap=128,
    init_only_keys=("encoder_weights",),
)


@register_arch(SPEC)
class ResNetEncDec(SizeAgnostic):
    """A torchvision ResNet encoder and a five-stage upsampling decoder with skips.

    Args:
        encoder: ``resnet18``, ``resnet34`` or ``resnet50`` (the seed's).
        decoder_channels: output channels of the five decoder stages, coarsest first.
        encoder_weights: ``"imagenet"`` starts the encoder from torchvision's ImageNet weights
            when they are already in the torch cache (never downloaded); None starts it
            random. Only an initialisation (``ArchSpec.init_only_keys``): loaded weights
            replace it, so loaders build with None.

    ``forward(x)`` takes RGB in [0, 1], (N, 3, H, W) of any H×W, and returns the restored
    image of the same shape (input + predicted residual), not clamped to [0, 1]. BatchNorm
    layers: call ``eval()`` before inference.
    """

    size_multiple = SPEC.size_multiple

    def __init__(self, encoder: str, decoder_channels: list[int], encoder_weights: str | None):
        super().__init__()
        if encoder not in _ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(_ENCODERS)}, not {encoder!r}")
        factory, _, enc_ch = _ENCODERS[encoder]
        net = factory(weights=None)
        if encoder_weights == "imagenet":
            self._load_imagenet(net, encoder)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)  # 1/2
        self.pool = net.maxpool
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.normalize = ImageNetNormalize()
        skips = [enc_ch[3], enc_ch[2], enc_ch[1], enc_ch[0], 3]  # 1/16, 1/8, 1/4, 1/2, 1/1
        cin = enc_ch[4]
        stages = []
        for cskip, cout in zip(skips, decoder_channels, strict=True):
            stages.append(_DecoderStage(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(cin, 3, 3, padding=1)

    @staticmethod
    def _load_imagenet(net: nn.Module, encoder: str) -> None:
        if any(p.is_meta for p in net.parameters()):
            return
        state = _cached_imagenet_state(encoder)
        if state is None:
            log.warning(
                "ImageNet weights for %s are not in the torch cache; the encoder starts random",
                encoder,
            )
            return
        net.load_state_dict(state)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        s1 = self.stem(z)
        feats = [s1]
        f = self.pool(s1)
        for layer in self.layers:
            f = layer(f)
            feats.append(f)
        # feats: stem 1/2, layer1 1/4, layer2 1/8, layer3 1/16, layer4 1/32
        skips = [feats[3], feats[2], feats[1], feats[0], z]
        d = feats[4]
        for stage, skip in zip(self.decoder, skips, strict=True):
            d = stage(d, skip)
        return x + self.head(d) * self.normalize.std
