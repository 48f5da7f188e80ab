"""Loss functions of the recipes: pixel, frequency, perceptual, edge and adversarial terms.

The terms a recipe (or ``--loss``) names are looked up in a registry, as BasicSR's
``LOSS_REGISTRY``: :func:`build_loss` turns a name into a function of the model's
:class:`Prediction` and the sharp batch, and :func:`loss_names` lists the known names.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deblurcli.errors import UsageError
from deblurcli.training.vgg import VGGFeatures


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(pred.float(), target.float())


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


CHARBONNIER_EPS = 1e-3
PSNR_LOSS_EPS = 1e-8


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of sqrt((pred − target)² + ε²), ε = 1e-3: a smooth L1 (MPRNet, NAFNet's baseline)."""
    diff = pred.float() - target.float()
    return torch.sqrt(diff * diff + CHARBONNIER_EPS**2).mean()


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Minus the mean per-image PSNR (dB, peak 1): 10·log10(MSE_i + ε) averaged (NAFNet).

    Unlike MSE it weighs every image's error relative to its own level, so well-restored
    patches keep a gradient; its value is negative (−PSNR).
    """
    err = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (10.0 / math.log(10.0)) * torch.log(err + PSNR_LOSS_EPS).mean()


def _spectrum(images: torch.Tensor) -> torch.Tensor:
    # Orthonormal FFT: Parseval keeps the term on the pixel losses' scale at any patch size.
    return torch.fft.rfft2(images.float(), norm="ortho")


def fft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance of the 2-D spectra's real and imaginary parts (MIMO-UNet's FFT loss)."""
    return torch.view_as_real(_spectrum(pred) - _spectrum(target)).abs().mean()


def fft_amplitude_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance of the 2-D spectra's amplitudes (phase ignored)."""
    return (_spectrum(pred).abs() - _spectrum(target).abs()).abs().mean()


# Losses of (restored, sharp) alone, by the names recipes and ``--loss`` use.
PIXEL_LOSSES = {
    "l1": l1_loss,
    "mse": mse_loss,
    "charbonnier": charbonnier_loss,
    "psnr": psnr_loss,
    "fft": fft_loss,
    "fft_amp": fft_amplitude_loss,
}


class PerceptualLoss(nn.Module):
    """Mean squared distance of VGG19 features at one layer (Johnson et al.; DeblurGAN's L_X)."""

    def __init__(self, vgg: VGGFeatures, layer: str):
        super().__init__()
        self.vgg = vgg
        self.layer = layer

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.vgg(target)[self.layer]
        return F.mse_loss(self.vgg(pred)[self.layer].float(), want.float())


def canny_edges(images: torch.Tensor, low: int = 50, high: int = 150) -> torch.Tensor:
    """Binary Canny edge maps (N×1×H×W float 0/1) of RGB images in [0, 1] (via OpenCV)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    maps = []
    for img in arr:
        gray = cv2.cvtColor(np.ascontiguousarray(img.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
        maps.append(cv2.Canny(gray, low, high) > 0)
    return torch.from_numpy(np.stack(maps)[:, None].astype(np.float32)).to(images.device)


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """HED's class-balanced BCE: positives weighted by the negative share and vice versa.

    Per image, β = |negatives| / |all|; edge pixels get weight β, others 1 − β, so the rare
    edge class is not drowned by the background.
    """
    target = target.float()
    n = target[0].numel()
    pos = target.flatten(1).sum(1).view(-1, 1, 1, 1)
    beta = (n - pos) / n
    weight = torch.where(target > 0.5, beta, 1 - beta)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight, reduction="sum")
    return loss / target.shape[0] / n


def edge_loss(fused: torch.Tensor, sides: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """HED deep supervision: balanced BCE on the fused map and on every side output."""
    total = balanced_bce(fused, target)
    for side in sides:
        total = total + balanced_bce(side, target)
    return total / (1 + len(sides))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: (‖∇D(x̂)‖₂ − 1)² at random interpolates x̂ of real and fake (Gulrajani et al.)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(mixed)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(
    kind: str, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, gp_weight: float
) -> torch.Tensor:
    """Loss of the critic/discriminator on a real and a (detached) fake batch."""
    fake = fake.detach().float()
    real = real.float()
    if kind == "wgan-gp":
        loss = critic(fake).float().mean() - critic(real).float().mean()
        return loss + gp_weight * gradient_penalty(critic, real, fake)
    real_logit, fake_logit = critic(real).float(), critic(fake).float()
    return F.binary_cross_entropy_with_logits(
        real_logit, torch.ones_like(real_logit)
    ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))


def generator_adv_loss(kind: str, critic: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial term: −D(G(x)) for WGAN, non-saturating BCE for GAN."""
    score = critic(fake.float()).float()
    if kind == "wgan-gp":
        return -score.mean()
    return F.binary_cross_entropy_with_logits(score, torch.ones_like(score))


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Prediction:
    """What the model returned for a batch: the restored images and, for models with an edge
    branch (edgenet), the fused and side edge logits."""

    restored: torch.Tensor
    edges: torch.Tensor | None = None
    side_edges: list[torch.Tensor] | None = None


LossFn = Callable[[Prediction, torch.Tensor], torch.Tensor]
_LOSSES: dict[str, Callable[..., LossFn]] = {}


def register_loss(name: str) -> Callable[[Callable[..., LossFn]], Callable[..., LossFn]]:
    """Register a factory of a loss term under ``name`` (its keyword arguments: the options)."""

    def decorator(factory: Callable[..., LossFn]) -> Callable[..., LossFn]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        _LOSSES[name] = factory
        return factory

    return decorator


def loss_names() -> tuple[str, ...]:
    """The registered loss names, in registration order."""
    return tuple(_LOSSES)


def check_loss_name(name: str) -> str:
    """``name`` if it is a registered loss; else a one-line usage error listing the known."""
    if name not in _LOSSES:
        raise UsageError(f"unknown loss {name!r}; known: {', '.join(_LOSSES)}")
    return name


def build_loss(name: str, **options: object) -> LossFn:
    """The loss term ``name``, a function of (prediction, sharp batch).

    Each term takes the options it declares and ignores the rest, so one call site can pass
    everything any term might need (the VGG network, its layer, whether the model has edges).
    """
    factory = _LOSSES[check_loss_name(name)]
    wanted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in options.items() if k in wanted})


def _pixel_term(name: str) -> Callable[[], LossFn]:
    def factory() -> LossFn:
        fn = PIXEL_LOSSES[name]  # looked up when built: the table stays the one to change
        return lambda pred, sharp: fn(pred.restored, sharp)

    return factory


for _name in PIXEL_LOSSES:
    register_loss(_name)(_pixel_term(_name))


@register_loss("perceptual")
def _perceptual(*, vgg: VGGFeatures, layer: str) -> LossFn:
    module = PerceptualLoss(vgg, layer)
    return lambda pred, sharp: module(pred.restored, sharp)


@register_loss("edge_bce")
def _edge_bce(*, has_edges: bool, arch: str) -> LossFn:
    if not has_edges:
        raise UsageError(f"edge_bce needs an edge branch; {arch} has none", option="loss")

    def loss(pred: Prediction, sharp: torch.Tensor) -> torch.Tensor:
        assert pred.edges is not None and pred.side_edges is not None
        return edge_loss(pred.edges, pred.side_edges, canny_edges(sharp))

    return loss
