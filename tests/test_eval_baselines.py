"""The classical baselines: Wiener agrees with the project's blur convention, noise estimate."""

from __future__ import annotations

import numpy as np
import pytest

from deblurcli.degradations import convolve, motion_kernel
from deblurcli.evaluation.baselines import (
    Sample,
    Unsharp,
    Wiener,
    _otf,
    estimate_noise_sigma,
    unsharp_mask,
    wiener_deconvolve,
)
from tests.conftest import natural_image


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_wiener_uses_the_same_convolution_as_degradations() -> None:
    """Away from the borders, degradations.convolve equals Wiener's FFT model of the blur."""
    sharp = natural_image(80, 96, seed=4).astype(np.float64)
    kernel = motion_kernel(np.random.default_rng(3), size=15)
    assert not np.allclose(kernel, kernel[::-1, ::-1])  # asymmetric, so orientation matters
    blurred = convolve(sharp.astype(np.float32), kernel)

    def fft_blur(k: np.ndarray) -> np.ndarray:
        otf = _otf(k.astype(np.float64), sharp.shape[:2])
        return np.stack(
            [np.fft.irfft2(np.fft.rfft2(sharp[..., c]) * otf, s=sharp.shape[:2]) for c in range(3)],
            axis=-1,
        )

    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(fft_blur(kernel) - blurred)[inner].max() < 1e-5
    assert np.abs(fft_blur(kernel[::-1, ::-1]) - blurred)[inner].max() > 1e-2


def test_wiener_restores_a_blur_it_is_given_the_kernel_of() -> None:
    sharp = natural_image(96, 96, seed=2)
    kernel = np.zeros((9, 9), np.float32)
    kernel[4, :] = 1 / 9  # symmetric, so mirrored borders are (nearly) consistent with it
    blurred = convolve(sharp, kernel)
    restored = wiener_deconvolve(blurred, kernel, 1e-4)
    assert _psnr(restored, sharp) > _psnr(blurred, sharp) + 5


@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.05])
def test_noise_estimate_tracks_the_true_sigma(sigma: float) -> None:
    rng = np.random.default_rng(0)
    smooth = np.clip(convolve(natural_image(128, 128, seed=1), np.full((5, 5), 1 / 25)), 0, 1)
    noisy = smooth + rng.normal(0, sigma, smooth.shape).astype(np.float32)
    assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.25)


def test_tuning_picks_better_parameters_than_the_defaults() -> None:
    rng = np.random.default_rng(5)
    samples = []
    for i in range(3):
        sharp = natural_image(64, 64, seed=30 + i)
        kernel = motion_kernel(rng, size=13)
        noisy = convolve(sharp, kernel) + rng.normal(0, 0.02, sharp.shape).astype(np.float32)
        samples.append(Sample(np.clip(noisy, 0, 1).astype(np.float32), sharp, kernel))
    for baseline in (Wiener(), Unsharp()):
        before = np.mean([_psnr(baseline(s.blurred, s.kernel), s.sharp) for s in samples])
        baseline.tune(samples)
        after = np.mean([_psnr(baseline(s.blurred, s.kernel), s.sharp) for s in samples])
        assert after >= before
    assert unsharp_mask(samples[0].sharp, 1.0, 0.0) == pytest.approx(samples[0].sharp, abs=1e-6)


def test_wiener_with_a_kernel_wider_than_the_image() -> None:
    sharp = natural_image(12, 14, seed=5)
    kernel = motion_kernel(np.random.default_rng(1), size=41)
    blurred = convolve(sharp, kernel)
    restored = wiener_deconvolve(blurred, kernel, 1e-3)
    assert restored.shape == sharp.shape and np.isfinite(restored).all()
