"""``deblur data prepare``'s downscale: OpenCV area vs scikit-image block mean, side by side.

All compute the same linear-light box mean (the script checks they agree; prepare feeds 8-bit
photos as uint8 codes through a lookup table, the "8-bit" column); the figure that
matters is speed on a wallpaper-sized photo. The naive sRGB-code average is timed too, with how
much darker it makes fine bright detail, which is why prepare averages light instead.

    python benchmarks/bench_photo_prepare.py [--quick]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from _timing import median_seconds
from skimage.transform import downscale_local_mean

from deblurcli.data.photo_pool import downscale, linear_to_srgb, srgb_to_linear


def photo_like(h: int, w: int) -> np.ndarray:
    """Smooth colour fields with fine bright grass-like strokes (the case that darkens)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.3 + 0.2 * np.sin(xx / 70), 0.4 + 0.2 * np.cos(yy / 50), 0.25 + 0 * xx], 2)
    strokes = rng.random((h, w)) < 0.08
    img[strokes] = 0.95
    return np.clip(img, 0, 1).astype(np.float32)


def skimage_linear(pixels: np.ndarray, factor: int) -> np.ndarray:
    h, w = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    small = downscale_local_mean(srgb_to_linear(pixels[:h, :w]), (factor, factor, 1))
    return linear_to_srgb(small.astype(np.float32))


def opencv_srgb_codes(pixels: np.ndarray, factor: int) -> np.ndarray:
    h, w = pixels.shape[0] // factor, pixels.shape[1] // factor
    return cv2.resize(pixels[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller photo, fewer repeats")
    args = parser.parse_args()
    h, w, repeats = (800, 1280, 3) if args.quick else (1600, 2560, 5)
    cv2.setNumThreads(2)
    pixels = photo_like(h, w)
    codes = np.rint(pixels * 255).astype(np.uint8)  # what prepare feeds 8-bit photos
    print(f"{w}×{h} photo, median of {repeats}")
    for factor in (2, 3, 4):
        ours = downscale(pixels, factor)
        ref = skimage_linear(pixels, factor)
        naive = opencv_srgb_codes(pixels, factor)
        assert np.abs(ours - ref).max() < 1e-4, "OpenCV and scikit-image disagree"
        assert np.abs(downscale(codes, factor) - ref).max() < 2e-3, "8-bit path disagrees"
        t_lut = median_seconds(lambda f=factor: downscale(codes, f), repeats, warmup=False)
        t_cv = median_seconds(lambda f=factor: downscale(pixels, f), repeats, warmup=False)
        t_sk = median_seconds(lambda f=factor: skimage_linear(pixels, f), repeats, warmup=False)
        t_naive = median_seconds(
            lambda f=factor: opencv_srgb_codes(pixels, f), repeats, warmup=False
        )
        darker = float((ref - naive).mean() * 255)
        print(
            f"×{factor}: opencv-linear 8-bit {t_lut * 1e3:6.1f} ms, float {t_cv * 1e3:6.1f} ms | "
            f"skimage-linear {t_sk * 1e3:6.1f} ms (8-bit opencv {t_sk / t_lut:4.1f}× faster) | "
            f"sRGB-code average {t_naive * 1e3:5.1f} ms, {darker:+.1f} codes darker on average"
        )


if __name__ == "__main__":
    main()
