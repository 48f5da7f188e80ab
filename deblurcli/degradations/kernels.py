"""Blur kernels and convolution.

Every kernel is a 2-D float32 array with an odd side, non-negative, summing to 1, with its
centre of mass on the centre pixel (so a blurred image is not shifted against its sharp twin).
Sizes and lengths are in pixels, angles in degrees (counter-clockwise from the x axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

TRAJECTORY_STEPS = 1000
# DeblurGAN draws its "expl" (anxiety) from 5e-5..5e-3; the total turning of a path scales
# with anxiety²·steps, independent of its length, so kernels keep their look at any size.
ANXIETY = (0.0005, 0.005)
# A rank-1 kernel is applied as two 1-D passes; this is the largest difference, relative to
# the kernel's peak, from the product of its 1-D sums for a kernel to count as separable.
_SEPARABLE_TOL = 1e-6
# OpenCV's filter2D already switches to DFT-based correlation for kernels of about 11×11 and
# up, and measured faster than a NumPy FFT for every size tried up to 201×201 on 512–1024 px
# images (see benchmarks/bench_blur.py), so "auto" only uses the FFT for enormous kernels.
_FFT_MIN_SIDE = 255


def _odd(n: float) -> int:
    n = max(1, math.ceil(n))
    return n if n % 2 else n + 1


def _normalise(kernel: np.ndarray) -> np.ndarray:
    kernel = np.clip(kernel, 0.0, None)
    total = kernel.sum()
    if total <= 0:
        raise ValueError("kernel has no mass")
    return (kernel / total).astype(np.float32)


def gaussian_kernel(
    sigma_x: float, sigma_y: float | None = None, angle: float = 0.0, size: int | None = None
) -> np.ndarray:
    """A (possibly anisotropic, rotated) Gaussian; ``size`` defaults to 2·⌈3σ_max⌉+1.

    ``sigma_x`` lies along ``angle``; σ = r is what PIL's ``GaussianBlur(radius=r)`` uses.
    """
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError("Gaussian sigmas must be positive")
    size = _odd(2 * math.ceil(3 * max(sigma_x, sigma_y)) + 1) if size is None else _odd(size)
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    theta = math.radians(angle)
    c, s = math.cos(theta), math.sin(theta)
    u = c * x - s * y  # y grows downwards in images, so flip it for a counter-clockwise angle
    v = s * x + c * y
    return _normalise(np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2)))


def defocus_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """A uniform disk of ``radius`` px, anti-aliased by ``supersample``² samples per pixel."""
    if radius <= 0:
        raise ValueError("defocus radius must be positive")
    size = _odd(2 * math.ceil(radius) + 1)
    half = size // 2
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    coords = (np.arange(-half, half + 1)[:, None] + offsets[None, :]).ravel()
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    inside = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    cover = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    if cover.sum() == 0:  # radius below half a pixel: the centre pixel alone
        cover[half, half] = 1.0
    return _normalise(cover)


def splat(x: np.ndarray, y: np.ndarray, margin: int = 1) -> np.ndarray:
    """Bilinear (sub-pixel) splatting of equal-weight points, centred on their centroid.

    The canvas is the smallest odd square holding every point plus ``margin`` pixels.
    """
    x = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64) - np.mean(y)
    reach = max(np.abs(x).max(initial=0.0), np.abs(y).max(initial=0.0))
    size = _odd(2 * (math.ceil(reach) + margin) + 1)
    half = size // 2
    x, y = x + half, y + half
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    canvas = np.zeros(size * size, np.float64)
    for dx, dy, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        canvas += np.bincount((y0 + dy) * size + (x0 + dx), weights=w, minlength=size * size)
    return _normalise(canvas.reshape(size, size))


def linear_motion_kernel(length: float, angle: float, size: int | None = None) -> np.ndarray:
    """Uniform straight-line motion over ``length`` px at ``angle`` degrees."""
    if length < 0:
        raise ValueError("motion length must be >= 0")
    t = np.linspace(-0.5, 0.5, max(2, math.ceil(length * 8)))
    theta = math.radians(angle)
    kernel = splat(t * length * math.cos(theta), -t * length * math.sin(theta))
    return _fit(kernel, size)


@dataclass(frozen=True)
class Trajectory:
    """A camera-shake trajectory: complex positions (x + iy, px) and its parameters."""

    points: np.ndarray
    params: dict[str, Any]


def random_trajectory(
    rng: np.random.Generator,
    length: float,
    anxiety: float | None = None,
    steps: int = TRAJECTORY_STEPS,
) -> Trajectory:
    """A random camera-shake trajectory (Boracchi & Foi 2012, as used by DeblurGAN).

    A constant-speed random walk of total path ``length`` px: each step the velocity gets a
    Gaussian shake and a centripetal pull back toward where the motion started, and now and
    then an impulsive near-reversal of direction. ``anxiety`` scales all three (0 gives a
    straight line; default drawn from ``ANXIETY``); the shake, pull and reversal strengths
    are drawn per trajectory as in the paper's reference code.
    """
    anxiety = float(rng.uniform(*ANXIETY)) if anxiety is None else float(anxiety)
    centripetal = float(rng.uniform(0.0, 0.7))
    big_shake_prob = float(rng.uniform(0.0, 0.2))
    shake = float(rng.uniform(0.0, 10.0))
    start_angle = float(rng.uniform(0.0, 360.0))
    # Draw every random number up front: a fixed count per trajectory, whatever the path does.
    reversal_draw = rng.uniform(size=steps - 1).tolist()
    reversal_turn = (rng.uniform(size=steps - 1) - 0.5).tolist()
    noise = rng.standard_normal((steps - 1, 2))
    jitter = (noise[:, 0] + 1j * noise[:, 1]).tolist()

    step = length / (steps - 1)
    v = complex(math.cos(math.radians(start_angle)), math.sin(math.radians(start_angle))) * step
    pos = 0j
    points = [pos]
    reversals = 0
    for t in range(steps - 1):
        kick = 0j
        if reversal_draw[t] < big_shake_prob * anxiety:
            kick = 2 * v * complex(math.cos(math.pi + reversal_turn[t]),
                                   math.sin(math.pi + reversal_turn[t]))  # fmt: skip
            reversals += 1
        v += kick + anxiety * (shake * jitter[t] - centripetal * pos) * step
        speed = abs(v)
        v = v / speed * step if speed > 0 else complex(step, 0.0)
        pos += v
        points.append(pos)
    params = {
        "length": float(length),
        "anxiety": anxiety,
        "centripetal": centripetal,
        "big_shake_prob": big_shake_prob,
        "gaussian_shake": shake,
        "start_angle": start_angle,
        "steps": int(steps),
        "reversals": reversals,
    }
    return Trajectory(points=np.asarray(points, np.complex128), params=params)


def trajectory_kernel(trajectory: Trajectory, size: int | None = None) -> np.ndarray:
    """Splat a trajectory (equal exposure time per step) onto a kernel canvas."""
    pts = trajectory.points
    return _fit(splat(pts.real, -pts.imag), size)


def motion_kernel(
    rng: np.random.Generator,
    size: int | None = None,
    length: float | None = None,
    anxiety: float | None = None,
    steps: int = TRAJECTORY_STEPS,
) -> np.ndarray:
    """A random camera-shake kernel; ``length`` defaults to 0.75·``size`` (or 5–25 px)."""
    if length is None:
        length = 0.75 * size if size else float(rng.uniform(5.0, 25.0))
    return trajectory_kernel(random_trajectory(rng, length, anxiety, steps), size)


def _fit(kernel: np.ndarray, size: int | None) -> np.ndarray:
    """Centre-crop or zero-pad ``kernel`` to an odd ``size`` (renormalised)."""
    if size is None or size == kernel.shape[0]:
        return kernel
    size = _odd(size)
    have = kernel.shape[0]
    if size > have:
        pad = (size - have) // 2
        return np.pad(kernel, pad)
    cut = (have - size) // 2
    return _normalise(kernel[cut : cut + size, cut : cut + size])


def _separable(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) factors when ``kernel`` is rank 1, else None.

    A non-negative rank-1 kernel is the outer product of its row and column sums over its
    total, so checking that costs O(n²) where an SVD costs O(n³) (seconds for a 1000 px
    kernel, on every image).
    """
    k = kernel.astype(np.float64)
    total = k.sum()
    if total <= 0 or k.min() < 0:
        return None
    col, row = k.sum(axis=1), k.sum(axis=0) / total
    if np.abs(np.outer(col, row) - k).max() > _SEPARABLE_TOL * k.max():
        return None
    return col.astype(np.float32), row.astype(np.float32)


def convolve(image: np.ndarray, kernel: np.ndarray, method: str = "auto") -> np.ndarray:
    """Convolve an H×W or H×W×C float image with ``kernel``, reflecting at the borders.

    ``method``: "auto" (two 1-D passes for separable kernels, else OpenCV's filter2D, which
    uses a DFT itself for large kernels; a NumPy FFT only for enormous ones), "filter2d",
    "separable" or "fft". All give the same result to float32 rounding.
    """
    image = np.asarray(image, np.float32)
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError("kernel must be 2-D with odd sides")
    if method == "auto":
        fits = kernel.shape[0] < image.shape[0] and kernel.shape[1] < image.shape[1]
        if max(kernel.shape) >= _FFT_MIN_SIDE and fits:
            method = "fft"
        else:
            method = "separable" if _separable(kernel) is not None else "filter2d"
    if method == "fft":
        return _fft_convolve(image, kernel)
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])  # OpenCV correlates; we convolve
    if method == "filter2d":
        out = cv2.filter2D(image, -1, flipped, borderType=cv2.BORDER_REFLECT_101)
    elif method == "separable":
        factors = _separable(flipped)
        if factors is None:
            raise ValueError("kernel is not separable")
        col, row = factors
        out = cv2.sepFilter2D(image, -1, row, col, borderType=cv2.BORDER_REFLECT_101)
    else:
        raise ValueError(f"unknown convolution method {method!r}")
    return out.reshape(image.shape)  # OpenCV drops a trailing channel axis of 1


def _fft_convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    squeeze = image.ndim == 2
    img = image[..., None] if squeeze else image
    if ph >= img.shape[0] or pw >= img.shape[1]:
        raise ValueError("kernel is larger than the image")
    padded = np.pad(img, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")  # == BORDER_REFLECT_101
    shape = (cv2.getOptimalDFTSize(padded.shape[0]), cv2.getOptimalDFTSize(padded.shape[1]))
    spectrum = np.fft.rfft2(padded, shape, axes=(0, 1))
    spectrum *= np.fft.rfft2(kernel, shape)[..., None]
    full = np.fft.irfft2(spectrum, shape, axes=(0, 1))
    out = full[kh - 1 : kh - 1 + img.shape[0], kw - 1 : kw - 1 + img.shape[1]]
    out = out.astype(np.float32)
    return out[..., 0] if squeeze else out
