"""Kernels, convolution, noise, JPEG and degrade() against references (SciPy/scikit-image)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import gaussian as sk_gaussian
from skimage.metrics import peak_signal_noise_ratio

from deblurcli.degradations import (
    KINDS,
    DegradeOptions,
    convolve,
    defocus_kernel,
    degrade,
    gaussian_kernel,
    image_seed,
    jpeg_compress,
    linear_motion_kernel,
    motion_kernel,
    parse_range,
    random_trajectory,
)
from deblurcli.degradations.noise import add_noise
from tests.conftest import natural_image


def _principal_spread(kernel: np.ndarray) -> tuple[float, float]:
    """Weighted standard deviations along the kernel's major and minor axes."""
    y, x = np.mgrid[: kernel.shape[0], : kernel.shape[1]].astype(np.float64)
    w = kernel.astype(np.float64)
    mx, my = (w * x).sum(), (w * y).sum()
    cov = np.cov(np.stack([(x - mx).ravel(), (y - my).ravel()]), aweights=w.ravel(), bias=True)
    minor, major = np.sqrt(np.maximum(np.linalg.eigvalsh(cov), 0))
    return float(major), float(minor)


def _all_kernels() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        gaussian_kernel(1.5),
        gaussian_kernel(3.0, 0.8, angle=35.0),
        defocus_kernel(0.3),
        defocus_kernel(4.2),
        linear_motion_kernel(0.0, 0.0),
        linear_motion_kernel(13.0, 120.0),
        *(motion_kernel(rng, length=float(n)) for n in (4, 12, 30)),
    ]


@pytest.mark.parametrize("index", range(9))
def test_kernels_are_normalised_nonnegative_odd_and_centred(index):
    kernel = _all_kernels()[index]
    assert kernel.dtype == np.float32 and kernel.ndim == 2
    assert kernel.shape[0] % 2 == 1 and kernel.shape[1] % 2 == 1
    assert kernel.min() >= 0
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    y, x = np.mgrid[: kernel.shape[0], : kernel.shape[1]]
    centre = kernel.shape[0] // 2
    # centre of mass on the centre pixel: the blurred image is not shifted against the sharp
    assert (kernel * x).sum() == pytest.approx(centre, abs=0.05)
    assert (kernel * y).sum() == pytest.approx(centre, abs=0.05)


def test_gaussian_blur_matches_scikit_image():
    image = natural_image(48, 40)
    ours = convolve(image, gaussian_kernel(2.0))
    ref = sk_gaussian(image, sigma=2.0, mode="mirror", truncate=3.0, channel_axis=-1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_anisotropic_gaussian_is_elongated_along_its_angle():
    kernel = gaussian_kernel(4.0, 1.0, angle=90.0)  # sigma_x along the vertical
    major, minor = _principal_spread(kernel)
    assert major == pytest.approx(4.0, rel=0.05) and minor == pytest.approx(1.0, rel=0.05)
    assert kernel[:, kernel.shape[1] // 2].sum() > kernel[kernel.shape[0] // 2].sum()


@pytest.mark.parametrize("method", ["filter2d", "fft", "auto"])
def test_convolve_matches_scipy_convolution_with_reflect_border(method):
    rng = np.random.default_rng(0)
    image = natural_image(40, 52)
    kernel = rng.random((9, 7)).astype(np.float32)  # asymmetric: catches a missing flip
    kernel /= kernel.sum()
    ref = np.stack([ndimage.convolve(image[..., c], kernel, mode="mirror") for c in range(3)], -1)
    np.testing.assert_allclose(convolve(image, kernel, method), ref, atol=1e-5)
    gray = convolve(image[..., :1], kernel, method)
    assert gray.shape == (40, 52, 1)
    np.testing.assert_allclose(gray[..., 0], ref[..., 0], atol=1e-5)


def test_separable_path_equals_full_filter():
    image = natural_image(32, 32)
    kernel = gaussian_kernel(1.7)
    full = convolve(image, kernel, "filter2d")
    np.testing.assert_allclose(convolve(image, kernel, "separable"), full, atol=1e-6)
    with pytest.raises(ValueError):
        convolve(image, defocus_kernel(3.0), "separable")


def test_separability_check_needs_no_svd(monkeypatch):
    """An SVD per image cost seconds for a σ = 100 kernel (O(n³)); the check must not need one."""

    def no_svd(*args, **kwargs):
        raise AssertionError("SVD called")

    monkeypatch.setattr(np.linalg, "svd", no_svd)
    image = natural_image(40, 48)
    for kernel in (gaussian_kernel(60.0), gaussian_kernel(2.0, 0.7), linear_motion_kernel(9, 0)):
        full = convolve(image, kernel, "filter2d")
        np.testing.assert_allclose(convolve(image, kernel, "separable"), full, atol=1e-5)
    for kernel in (gaussian_kernel(2.0, 0.7, 30.0), defocus_kernel(3.0)):
        with pytest.raises(ValueError, match="not separable"):
            convolve(image, kernel, "separable")


def test_defocus_kernel_is_a_round_disk():
    radius = 4.0
    kernel = defocus_kernel(radius)
    area = (kernel > 0).sum()
    assert math.pi * radius**2 * 0.9 < area < math.pi * (radius + 1) ** 2
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-7)
    np.testing.assert_allclose(kernel, kernel[::-1], atol=1e-7)


def test_linear_motion_kernel_is_a_segment_of_the_given_length():
    length = 15.0
    major, minor = _principal_spread(linear_motion_kernel(length, 30.0))
    assert major == pytest.approx(length / math.sqrt(12), rel=0.1)  # uniform segment
    assert minor < 0.5


def test_trajectory_has_the_requested_path_length():
    trajectory = random_trajectory(np.random.default_rng(3), 20.0, anxiety=0.05)
    assert np.abs(np.diff(trajectory.points)).sum() == pytest.approx(20.0, rel=1e-6)
    for key in ("length", "anxiety", "centripetal", "big_shake_prob", "gaussian_shake"):
        assert key in trajectory.params


def test_motion_kernels_are_not_all_linear_and_vary_with_the_seed():
    kernels = [motion_kernel(np.random.default_rng(s), length=20.0) for s in range(12)]
    minors = [_principal_spread(k)[1] for k in kernels]
    line_minor = _principal_spread(linear_motion_kernel(20.0, 33.0))[1]
    assert line_minor < 0.5
    assert sum(m > 2 * line_minor + 0.1 for m in minors) >= 4  # curved, shaken paths
    shapes = {k.shape for k in kernels}
    assert len(shapes) > 1 or any(not np.array_equal(kernels[0], k) for k in kernels[1:])
    same = motion_kernel(np.random.default_rng(5), length=20.0)
    np.testing.assert_array_equal(same, kernels[5])


def test_zero_anxiety_trajectory_is_a_straight_line():
    kernel = motion_kernel(np.random.default_rng(1), length=15.0, anxiety=0.0)
    major, minor = _principal_spread(kernel)
    assert minor < 0.5 and major == pytest.approx(15.0 / math.sqrt(12), rel=0.1)


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_noise_has_the_requested_sigma_at_mid_grey(noise):
    flat = np.full((128, 128, 3), 0.5, np.float32)
    noisy = add_noise(flat, noise, 0.04, np.random.default_rng(0))
    assert (noisy - flat).std() == pytest.approx(0.04, rel=0.05)
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_jpeg_quality_orders_the_error():
    image = natural_image(64, 64)
    low = peak_signal_noise_ratio(image, jpeg_compress(image, 10), data_range=1.0)
    high = peak_signal_noise_ratio(image, jpeg_compress(image, 95), data_range=1.0)
    assert 20 < low < high
    assert jpeg_compress(image[..., :1], 50).shape == (64, 64, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(32, 40, 3), (32, 40, 1), (32, 40)])
def test_degrade_every_kind_keeps_shape_and_records_json(kind, shape):
    image = natural_image(32, 40)
    image = image[..., :1] if shape[-1:] == (1,) else image
    image = image[..., 0] if len(shape) == 2 else image
    result = degrade(image, kind, np.random.default_rng(11))
    assert result.image.shape == image.shape and result.image.dtype == np.float32
    assert result.image.min() >= 0 and result.image.max() <= 1
    assert not np.array_equal(result.image, image)
    record = json.loads(json.dumps(result.record))
    assert record["kind"] == kind
    if kind == "noise":
        assert result.kernel is None and record["noise"]["sigma"] > 0
    else:
        assert result.kernel.sum() == pytest.approx(1.0, abs=1e-5)
        assert record["kernel_size"] == list(result.kernel.shape)
    again = degrade(image, kind, np.random.default_rng(11))
    np.testing.assert_array_equal(again.image, result.image)


def test_degrade_applies_the_recorded_kernel():
    image = natural_image(40, 40)
    result = degrade(image, "gaussian", np.random.default_rng(4))
    p = result.record["blur_params"]
    kernel = gaussian_kernel(p["sigma_x"], p["sigma_y"], p["angle"])
    np.testing.assert_array_equal(kernel, result.kernel)
    np.testing.assert_allclose(result.image, np.clip(convolve(image, kernel), 0, 1), atol=1e-6)


def test_noise_and_jpeg_on_top_of_blur():
    opts = DegradeOptions(noise_prob=1.0, noise_sigma=(0.02, 0.02), jpeg_quality=(70, 70))
    record = degrade(natural_image(32, 32), "defocus", np.random.default_rng(0), opts).record
    assert record["noise"]["sigma"] == 0.02 and record["jpeg_quality"] == 70
    plain = degrade(natural_image(32, 32), "defocus", np.random.default_rng(0)).record
    assert plain["noise"] is None and plain["jpeg_quality"] is None


def test_mix_follows_its_documented_weights():
    image = natural_image(12, 12)
    counts: dict[str, int] = {}
    noisy = jpeg = kernel_blurs = 0
    n = 800
    for s in range(n):
        r = degrade(image, "mix", np.random.default_rng(s)).record
        counts[r["blur"]] = counts.get(r["blur"], 0) + 1
        if r["blur"] != "camera":  # camera brings its own noise and JPEG
            kernel_blurs += 1
            noisy += r["noise"] is not None
            jpeg += r["jpeg_quality"] is not None
    expected = {
        "camera": 0.375,
        "motion": 0.25,
        "gaussian": 0.1875,
        "defocus": 0.09375,
        "linear_motion": 0.09375,
    }
    assert sum(expected.values()) == 1.0 and DegradeOptions().mix_weights == expected
    for name, share in expected.items():
        assert abs(counts.get(name, 0) / n - share) < 0.05, counts  # about 3 sigma
    assert abs(noisy / kernel_blurs - 0.3) < 0.06 and abs(jpeg / kernel_blurs - 0.2) < 0.06
    half = DegradeOptions(mix_weights={"motion": 0.5, "gaussian": 0.5})  # seed 000's mixture
    blurs = {
        degrade(image, "mix", np.random.default_rng(s), half).record["blur"] for s in range(40)
    }
    assert blurs == {"motion", "gaussian"}


def test_options_reject_bad_ranges():
    with pytest.raises(ValueError):
        DegradeOptions(gaussian_sigma=(3.0, 1.0))
    with pytest.raises(ValueError):
        DegradeOptions(noise_sigma=(0.0, 2.0))
    with pytest.raises(ValueError):
        DegradeOptions(mix_weights={"blurry": 1.0})
    with pytest.raises(ValueError):
        degrade(natural_image(8, 8), "sharpen", np.random.default_rng(0))


def test_parse_range():
    assert parse_range("5") == (5.0, 5.0)
    assert parse_range("0.01:0.05") == (0.01, 0.05)
    assert parse_range("60:90", int) == (60, 90)
    for bad in ("", "3:1", "1:2:3", "x", "nan"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_image_seed_is_stable_across_processes():
    seeds = {image_seed(0, "a/1.png"), image_seed(1, "a/1.png"), image_seed(0, "a/2.png")}
    assert len(seeds) == 3 and all(0 <= s < 2**63 for s in seeds)
    code = "from deblurcli.degradations import image_seed; print(image_seed(0, 'a/1.png'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        timeout=120,
    )
    assert int(out.stdout) == image_seed(0, "a/1.png")


def test_degrade_options_overrides_are_checked():
    from deblurcli.degradations import DegradeOptions
    from deblurcli.errors import UsageError

    opts = DegradeOptions().with_overrides(
        {"gaussian_sigma": [1, 3], "jpeg_quality": None, "mix_weights": {"camera": 1.0}}
    )
    assert opts.gaussian_sigma == (1, 3) and opts.mix_weights == {"camera": 1.0}
    assert DegradeOptions().gaussian_sigma == (0.5, 3.0)  # a copy: the defaults stay
    for bad, message in (
        ({"sigma": 1}, "unknown degrade_option sigma"),
        ({"gaussian_sigma": 2}, "gaussian_sigma takes tuple"),
        ({"gaussian_sigma": [3, 1]}, "0 < low <= high"),
        ({"mix_noise_prob": 1.5}, "mix_noise_prob must be a probability"),
        ({"noise_prob": True}, "noise_prob takes float"),
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            DegradeOptions().with_overrides(bad)


def test_a_none_share_of_the_mix_passes_sharp_inputs_with_noise_and_jpeg_only():
    image = natural_image(40, 40)
    sharp_only = DegradeOptions(mix_weights={"none": 1.0}, mix_noise_prob=0, mix_jpeg_prob=0)
    plain = degrade(image, "mix", np.random.default_rng(0), sharp_only)
    assert plain.record["blur"] == "none" and plain.kernel.shape == (1, 1)
    np.testing.assert_array_equal(plain.image, image)
    noisy = DegradeOptions(mix_weights={"none": 1.0}, mix_noise_prob=1, mix_jpeg_prob=0)
    out = degrade(image, "mix", np.random.default_rng(0), noisy)
    assert out.record["noise"] is not None and not np.array_equal(out.image, image)
    # the image's detail survives: only noise was added, no blur
    assert peak_signal_noise_ratio(image, out.image, data_range=1.0) > 20
    blurs = DegradeOptions(mix_weights={"none": 0.5, "gaussian": 0.5})
    drawn = {
        degrade(image, "mix", np.random.default_rng(s), blurs).record["blur"] for s in range(30)
    }
    assert drawn == {"none", "gaussian"}
