"""Sensor noise and JPEG compression, on float images in [0, 1]."""

from __future__ import annotations

import cv2
import numpy as np

NOISE_TYPES = ("gaussian", "poisson")


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise of standard deviation ``sigma`` (in [0, 1] units), clipped."""
    noisy = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def poisson_peak(sigma: float) -> float:
    """Photon count at white whose shot noise has std ``sigma`` at mid grey (0.5)."""
    return 0.5 / (sigma * sigma)


def poisson_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Signal-dependent shot noise; ``sigma`` is its standard deviation at mid grey."""
    peak = poisson_peak(sigma)
    counts = rng.poisson(np.clip(image, 0.0, 1.0).astype(np.float64) * peak)
    return np.clip(counts / peak, 0.0, 1.0).astype(np.float32)


def add_noise(image: np.ndarray, kind: str, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add noise of ``kind`` ("gaussian" or "poisson") with strength ``sigma``."""
    if kind == "gaussian":
        return gaussian_noise(image, sigma, rng)
    if kind == "poisson":
        return poisson_noise(image, sigma, rng)
    raise ValueError(f"unknown noise type {kind!r}; expected one of {', '.join(NOISE_TYPES)}")


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip an H×W(×1|3) RGB/gray float image through an 8-bit JPEG at ``quality``."""
    squeeze = image.ndim == 3 and image.shape[2] == 1
    arr = image[..., 0] if squeeze else image
    q8 = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if q8.ndim == 3:
        q8 = np.ascontiguousarray(q8[..., ::-1])  # libjpeg's colour transform expects BGR order
    ok, buf = cv2.imencode(".jpg", q8, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if dec.ndim == 3:
        dec = dec[..., ::-1]
    out = dec.astype(np.float32) / 255.0
    return out.reshape(image.shape)
