"""Classical deblurring: unsharp masking, Wiener and Richardson-Lucy deconvolution.

They are what a user compares the networks against. ``deblur restore --model unsharp`` (and
``wiener`` / ``richardson-lucy`` with ``--kernel K.npy``, a known blur kernel such as one from
``deblur blur``'s ``kernels/``) runs them through the same engine, I/O and batch runner as the
networks: :func:`create_classical` wraps each in an ``nn.Module``. ``deblur eval`` scores the
same functions as baselines (:mod:`deblurcli.evaluation.baselines`), tuning their parameters
on the evaluated pairs.

Every function takes and returns H×W×C float32 arrays in [0, 1].
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from deblurcli.errors import UsageError

CLASSICAL_MODELS = ("unsharp", "wiener", "richardson-lucy")
NEEDS_KERNEL = ("wiener", "richardson-lucy")
# Unsharp masking tuned on the built-in benchmark (deblur eval --benchmark v1, 24 pairs) over
# the grid of evaluation.baselines.Unsharp: mean PSNR 25.58 dB against 25.32 dB blurry (and
# 25.17 dB at sigma 1.2, amount 1.0).
UNSHARP_DEFAULTS = {"sigma": 0.8, "amount": 0.6}
WIENER_DEFAULTS = {"floor": 1e-3, "gain": 100.0}
RICHARDSON_LUCY_ITERATIONS = 30


def unsharp_mask(image: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """``image + amount·(image − gaussian(image))`` clipped to [0, 1]; H×W×C float32."""
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    blurred = blurred.reshape(image.shape)  # OpenCV drops a single channel axis
    return np.clip(image + amount * (image - blurred), 0.0, 1.0).astype(np.float32)


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise sigma of an H×W(×C) image (Immerkær 1996, "Fast noise variance estimation").

    The 3×3 mask cancels locally planar signal, so on blurry images what remains is mostly
    noise. Estimated per channel (averaging channels first would hide noise), then averaged.
    """
    planes = image.reshape(*image.shape[:2], -1).astype(np.float32)
    if min(planes.shape[:2]) < 3:
        return 0.0
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(planes, -1, mask).reshape(planes.shape)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def wiener_balance(image: np.ndarray, floor: float, gain: float) -> float:
    """Noise-to-signal balance for ``image``: ``floor + gain·sigma²``, sigma estimated."""
    return floor + gain * estimate_noise_sigma(image) ** 2


def _otf(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Optical transfer function of ``kernel`` (centred) for an FFT of ``shape``."""
    padded = np.zeros(shape, np.float64)
    kh, kw = kernel.shape
    padded[:kh, :kw] = kernel
    padded = np.roll(padded, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return np.fft.rfft2(padded)


def wiener_deconvolve(image: np.ndarray, kernel: np.ndarray, balance: float) -> np.ndarray:
    """Wiener deconvolution of H×W×C ``image`` blurred by ``kernel`` (true convolution).

    The image is mirrored to 2H×2W first so the FFT's periodic extension has no seams
    (no ringing from the borders).
    """
    h, w = image.shape[:2]
    kernel = np.asarray(kernel, np.float64)
    kernel = kernel / kernel.sum()
    mirrored = np.pad(image.astype(np.float64), ((0, h), (0, w), (0, 0)), mode="symmetric")
    # A kernel wider than the mirrored image (tiny crops) needs a larger FFT: the mirrored
    # image is periodic, so extending it periodically adds no seams.
    grow = (max(0, kernel.shape[0] - 2 * h), max(0, kernel.shape[1] - 2 * w))
    if any(grow):
        mirrored = np.pad(mirrored, ((0, grow[0]), (0, grow[1]), (0, 0)), mode="wrap")
    otf = _otf(kernel, mirrored.shape[:2])
    gain = np.conj(otf) / (np.abs(otf) ** 2 + balance)
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[2]):
        spectrum = np.fft.rfft2(mirrored[..., c]) * gain
        out[..., c] = np.fft.irfft2(spectrum, s=mirrored.shape[:2])[:h, :w]
    return np.clip(out, 0.0, 1.0)


def richardson_lucy(
    image: np.ndarray, kernel: np.ndarray, iterations: int = RICHARDSON_LUCY_ITERATIONS
) -> np.ndarray:
    """Richardson-Lucy deconvolution of H×W×C ``image`` blurred by ``kernel`` (true convolution).

    Multiplicative updates ``x ← x · (k̃ ⋆ (y / (k ⋆ x)))`` from ``x = y``, reflecting at the
    borders; more iterations sharpen more and amplify noise more.
    """
    kernel = np.asarray(kernel, np.float32)
    kernel = kernel / kernel.sum()
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])
    observed = np.maximum(image.astype(np.float32), 1e-6)
    estimate = observed.copy()

    def filt(x: np.ndarray, k: np.ndarray) -> np.ndarray:  # OpenCV correlates
        return cv2.filter2D(x, -1, k, borderType=cv2.BORDER_REFLECT).reshape(x.shape)

    for _ in range(iterations):
        reblurred = np.maximum(filt(estimate, flipped), 1e-6)  # k ⋆ x
        estimate *= filt(observed / reblurred, kernel)  # k̃ ⋆ ratio: correlate with k
        np.clip(estimate, 0.0, 1.0, out=estimate)
    return estimate


class ClassicalModel(nn.Module):
    """A classical method behind the networks' interface: N×C×H×W in [0, 1] → same shape.

    It has no weights; each image goes through ``method`` on the CPU, in float32.
    """

    size_multiple = 1

    def __init__(
        self, name: str, method: Callable[[np.ndarray], np.ndarray], params: dict[str, Any]
    ):
        super().__init__()
        self.arch_name = name
        self.params = params
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for img in x:
            hwc = np.ascontiguousarray(img.detach().float().cpu().permute(1, 2, 0).numpy())
            out = self.method(hwc)
            outs.append(torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1))
        return torch.stack(outs).to(x.device)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items() if k != "kernel")


def load_kernel_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A blur kernel (PSF) from a ``.npy`` file: 2-D, finite, non-negative, positive sum."""
    path = Path(path)
    try:
        kernel = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", option="kernel") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a NumPy .npy array ({exc})", option="kernel") from None
    kernel = np.squeeze(np.asarray(kernel, np.float64))
    if kernel.ndim != 2 or not np.isfinite(kernel).all() or (kernel < 0).any() or kernel.sum() <= 0:
        raise UsageError(
            f"{path}: expected a 2-D array of non-negative numbers with a positive "
            f"sum, got shape {kernel.shape}",
            option="kernel",
        )
    return (kernel / kernel.sum()).astype(np.float32)


def create_classical(name: str, kernel: np.ndarray | None = None) -> ClassicalModel:
    """``unsharp`` (tuned defaults), or ``wiener`` / ``richardson-lucy`` with ``kernel``."""
    if name not in CLASSICAL_MODELS:
        raise UsageError(f"unknown classical method {name!r}; use {', '.join(CLASSICAL_MODELS)}")
    if name in NEEDS_KERNEL and kernel is None:
        raise UsageError(f"{name} needs {{option}} K.npy (the blur kernel, e.g. from "
                         "'deblur blur' OUT/kernels/)", option="kernel")  # fmt: skip
    if name not in NEEDS_KERNEL and kernel is not None:
        raise UsageError(f"is for {' and '.join(NEEDS_KERNEL)}, not {name}", option="kernel")
    if name == "unsharp":
        params = dict(UNSHARP_DEFAULTS)
        method = functools.partial(unsharp_mask, **params)
    elif name == "wiener":
        params = dict(WIENER_DEFAULTS)

        def method(image: np.ndarray) -> np.ndarray:
            return wiener_deconvolve(image, kernel, wiener_balance(image, **params))
    else:
        params = {"iterations": RICHARDSON_LUCY_ITERATIONS}
        method = functools.partial(richardson_lucy, kernel=kernel, **params)
    return ClassicalModel(name, method, params)
