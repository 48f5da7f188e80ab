"""Classical baselines scored next to the networks, for context.

* ``identity``: returns the blurry input (its row equals the blurry-input row by construction).
* ``unsharp``: unsharp masking ``x + amount·(x − G_sigma * x)``; sigma and amount are tuned
  by grid search (see below).
* ``wiener``: non-blind Wiener deconvolution with the *true* blur kernel that ``deblur blur``
  stored for each pair. Its noise-to-signal balance adapts to each image,
  ``floor + gain·sigma²`` with sigma estimated from the blurry image itself (Immerkær's
  fast noise estimator), and ``floor`` and ``gain`` are tuned the same way. It knows the
  kernel, the networks do not, so its row is labelled non-blind. Pairs without a kernel
  (noise-only, or datasets not made by ``deblur blur``) pass through unchanged.

Tuning uses :data:`TUNE_IMAGES` pairs spread evenly over the evaluated set.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from deblurcli.metrics import psnr

BASELINES = ("identity", "unsharp", "wiener")
TUNE_IMAGES = 6
UNSHARP_SIGMAS = (0.8, 1.2, 1.8, 2.5, 3.5)
UNSHARP_AMOUNTS = (0.3, 0.6, 1.0, 1.5, 2.0, 3.0)
WIENER_FLOORS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
WIENER_GAINS = (0.0, 10.0, 30.0, 100.0, 300.0)


@dataclass
class Sample:
    """One pair as H×W×C float32 arrays, plus the true kernel when the dataset has one."""

    blurred: np.ndarray
    sharp: np.ndarray
    kernel: np.ndarray | None = None


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """The project's PSNR (:func:`deblurcli.metrics.psnr`) of two same-shape arrays."""
    return float(psnr(torch.from_numpy(a), torch.from_numpy(b))[0])


@dataclass
class Baseline:
    """A pseudo-model: ``__call__`` maps a blurry H×W×C image (and kernel) to a restoration."""

    name: str
    label: str
    non_blind: bool = False
    params: dict[str, float] = field(default_factory=dict)

    def tune(self, samples: list[Sample]) -> None:  # noqa: B027 (identity has nothing to tune)
        """Pick parameters on ``samples``; a no-op for parameter-free baselines."""

    def __call__(self, blurred: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
        return blurred

    def describe(self) -> str:
        if not self.params:
            return self.label
        shown = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.label} [{shown}]"


class Unsharp(Baseline):
    def __init__(self) -> None:
        super().__init__("unsharp", "unsharp (tuned)", params={"sigma": 1.2, "amount": 1.0})

    def __call__(self, blurred: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
        return unsharp_mask(blurred, self.params["sigma"], self.params["amount"])

    def tune(self, samples: list[Sample]) -> None:
        samples = samples[:TUNE_IMAGES]
        if not samples:
            return
        best = max(
            itertools.product(UNSHARP_SIGMAS, UNSHARP_AMOUNTS),
            key=lambda p: np.mean([_psnr(unsharp_mask(s.blurred, *p), s.sharp) for s in samples]),
        )
        self.params = {"sigma": best[0], "amount": best[1]}


class Wiener(Baseline):
    def __init__(self) -> None:
        params = {"floor": 1e-3, "gain": 100.0}
        super().__init__("wiener", "wiener (true kernel)", non_blind=True, params=params)

    @staticmethod
    def balance(blurred: np.ndarray, floor: float, gain: float) -> float:
        """Noise-to-signal balance for this image: grows with its estimated noise."""
        return floor + gain * estimate_noise_sigma(blurred) ** 2

    def __call__(self, blurred: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
        if kernel is None:
            return blurred
        balance = self.balance(blurred, self.params["floor"], self.params["gain"])
        return wiener_deconvolve(blurred, kernel, balance)

    def tune(self, samples: list[Sample]) -> None:
        samples = [s for s in samples if s.kernel is not None][:TUNE_IMAGES]
        if not samples:
            return

        def score(floor: float, gain: float) -> float:
            restored = [
                wiener_deconvolve(s.blurred, s.kernel, self.balance(s.blurred, floor, gain))
                for s in samples
            ]
            return float(
                np.mean([_psnr(r, s.sharp) for r, s in zip(restored, samples, strict=True)])
            )

        floor, gain = max(itertools.product(WIENER_FLOORS, WIENER_GAINS), key=lambda p: score(*p))
        self.params = {"floor": floor, "gain": gain}


def make_baseline(name: str) -> Baseline:
    """A fresh baseline by name (one of :data:`BASELINES`)."""
    if name == "identity":
        return Baseline("identity", "identity")
    if name == "unsharp":
        return Unsharp()
    if name == "wiener":
        return Wiener()
    raise KeyError(name)


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
