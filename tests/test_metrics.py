"""PSNR/SSIM against scikit-image, and the BasicSR conventions against a reference computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblurcli.errors import DeblurError
from deblurcli.metrics import psnr, ssim
from tests.conftest import natural_image

SSIM_ARGS = {
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
    "data_range": 1.0,
}


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image on H×W×C (C = 1 is passed as a 2-D image)."""
    if a.shape[2] == 1:
        return structural_similarity(a[..., 0], b[..., 0], **SSIM_ARGS)
    return structural_similarity(a, b, channel_axis=2, **SSIM_ARGS)


def ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return peak_signal_noise_ratio(a, b, data_range=1.0)


def nchw(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def noisy_pair(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    return a, np.clip(a + rng.normal(0, 0.08, shape), 0, 1)


def blurred_natural(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    sharp = natural_image(h, w, seed).astype(np.float64)
    return sharp, gaussian_filter(sharp, sigma=(1.6, 1.6, 0), mode="reflect")


@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 64, 3), (11, 11, 3), (45, 29, 1), (33, 20, 1)])
def test_random_images_match_skimage(shape: tuple[int, int, int]) -> None:
    a, b = noisy_pair(shape, seed=sum(shape))
    x, y = nchw(a), nchw(b)
    assert ssim(x, y).item() == pytest.approx(ref_ssim(a, b), abs=1e-9)
    assert psnr(x, y).item() == pytest.approx(ref_psnr(a, b), abs=1e-9)


@pytest.mark.parametrize("size", [(96, 128), (61, 77)])
def test_natural_images_match_skimage(size: tuple[int, int]) -> None:
    sharp, blurred = blurred_natural(*size, seed=3)
    x, y = nchw(blurred), nchw(sharp)
    assert ssim(x, y).item() == pytest.approx(ref_ssim(blurred, sharp), abs=1e-9)
    assert psnr(x, y).item() == pytest.approx(ref_psnr(blurred, sharp), abs=1e-9)
    gray_s, gray_b = sharp.mean(2, keepdims=True), blurred.mean(2, keepdims=True)
    assert ssim(nchw(gray_b), nchw(gray_s)).item() == pytest.approx(
        ref_ssim(gray_b, gray_s), abs=1e-9
    )


def test_float32_inputs_within_the_issue_tolerance() -> None:
    sharp, blurred = blurred_natural(70, 90, seed=5)
    x, y = nchw(blurred).float(), nchw(sharp).float()
    assert ssim(x, y).item() == pytest.approx(ref_ssim(blurred, sharp), abs=1e-4)
    assert psnr(x, y).item() == pytest.approx(ref_psnr(blurred, sharp), abs=1e-3)


def test_batch_gives_per_image_values_in_order() -> None:
    pairs = [blurred_natural(48, 40, seed=s) for s in range(3)]
    x = nchw(*[b for _, b in pairs])
    y = nchw(*[s for s, _ in pairs])
    values = ssim(x, y)
    assert values.shape == (3,) and values.dtype == torch.float64
    for v, (s, b) in zip(values.tolist(), pairs, strict=True):
        assert v == pytest.approx(ref_ssim(b, s), abs=1e-9)
    assert len(set(values.tolist())) == 3


@pytest.mark.parametrize("border", [1, 4, 7])
def test_crop_border_equals_scoring_the_cropped_images(border: int) -> None:
    sharp, blurred = blurred_natural(57, 66, seed=border)
    c = slice(border, -border)
    ref_s, ref_p = ref_ssim(blurred[c, c], sharp[c, c]), ref_psnr(blurred[c, c], sharp[c, c])
    x, y = nchw(blurred), nchw(sharp)
    assert ssim(x, y, crop_border=border).item() == pytest.approx(ref_s, abs=1e-9)
    assert psnr(x, y, crop_border=border).item() == pytest.approx(ref_p, abs=1e-9)
    assert ssim(x, y, crop_border=border).item() != pytest.approx(ssim(x, y).item(), abs=1e-7)


@pytest.mark.parametrize("border", [0, 3])
def test_y_channel_matches_skimage_ycbcr_reference(border: int) -> None:
    sharp, blurred = blurred_natural(50, 70, seed=8)
    # scikit-image's rgb2ycbcr is ITU-R BT.601 studio range (Y in 16..235), as in BasicSR/MATLAB
    ys, yb = rgb2ycbcr(sharp)[..., :1] / 255.0, rgb2ycbcr(blurred)[..., :1] / 255.0
    if border:
        ys, yb = ys[border:-border, border:-border], yb[border:-border, border:-border]
    x, y = nchw(blurred), nchw(sharp)
    got_s = ssim(x, y, crop_border=border, y_channel=True).item()
    got_p = psnr(x, y, crop_border=border, y_channel=True).item()
    assert got_s == pytest.approx(ref_ssim(yb, ys), abs=1e-9)
    assert got_p == pytest.approx(ref_psnr(yb, ys), abs=1e-9)
    assert got_p != pytest.approx(psnr(x, y, crop_border=border).item(), abs=1e-3)


def test_identical_images_are_perfect_and_swapping_is_symmetric() -> None:
    sharp, blurred = blurred_natural(40, 40, seed=1)
    x, y = nchw(blurred), nchw(sharp)
    assert ssim(y, y).item() == pytest.approx(1.0, abs=1e-12)
    assert psnr(y, y).item() == float("inf")
    assert ssim(x, y).item() == pytest.approx(ssim(y, x).item(), abs=1e-12)


def test_too_small_for_the_window_is_a_user_error() -> None:
    a, b = noisy_pair((10, 30, 3), seed=0)
    with pytest.raises(DeblurError, match="SSIM window"):
        ssim(nchw(a), nchw(b))
    a, b = noisy_pair((20, 20, 3), seed=0)
    with pytest.raises(DeblurError, match="SSIM window"):
        ssim(nchw(a), nchw(b), crop_border=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    sharp, blurred = blurred_natural(256, 320, seed=2)
    x, y = nchw(blurred, sharp), nchw(sharp, blurred)
    for metric in (ssim, psnr):
        on_gpu = metric(x.cuda(), y.cuda(), y_channel=True, crop_border=2)
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(
            on_gpu.cpu(), metric(x, y, y_channel=True, crop_border=2), atol=1e-9, rtol=0
        )
