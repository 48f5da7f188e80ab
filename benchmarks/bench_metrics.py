"""PSNR + SSIM speed: deblurcli's torch metrics vs scikit-image, side by side in one run.

Run: python benchmarks/bench_metrics.py [--quick] [--images 16] [--size 256] [--repeats 5]
Scores N pairs of size×size RGB images with PSNR and SSIM (Gaussian window, sigma 1.5) by
(a) scikit-image one image at a time, (b) torch one image at a time, (c) torch as one batch,
and (d) the batch on CUDA when a GPU is present. Prints the median seconds of each and
speed-ups over scikit-image, and checks the values agree.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import median_seconds
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblurcli.metrics import psnr, ssim


def _images(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    sharp = rng.random((n, size, size, 3))
    noisy = np.clip(sharp + rng.normal(0, 0.05, sharp.shape), 0, 1)
    return sharp, noisy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4 images, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 4, 2
    a, b = _images(args.images, args.size)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).contiguous()

    def sk() -> list[tuple[float, float]]:
        kw = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
        return [
            (
                peak_signal_noise_ratio(x, y, data_range=1),
                structural_similarity(x, y, channel_axis=2, data_range=1, **kw),
            )
            for x, y in zip(a, b, strict=True)
        ]

    def one_by_one() -> list[tuple[float, float]]:
        return [
            (psnr(x[None], y[None]).item(), ssim(x[None], y[None]).item())
            for x, y in zip(ta, tb, strict=True)
        ]

    def batched(x: torch.Tensor = ta, y: torch.Tensor = tb) -> tuple[torch.Tensor, torch.Tensor]:
        return psnr(x, y), ssim(x, y)

    ref = np.array(sk())
    got = torch.stack(batched(), dim=1).numpy()
    assert np.allclose(ref, got, atol=1e-6), "metrics disagree with scikit-image"

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.images} pairs of {args.size}x{args.size} RGB, PSNR + SSIM, float64"
    )
    results = {
        "scikit-image (loop)": median_seconds(sk, args.repeats),
        "torch CPU (loop)": median_seconds(one_by_one, args.repeats),
        "torch CPU (batch)": median_seconds(batched, args.repeats),
    }
    if torch.cuda.is_available():
        ca, cb = ta.cuda(), tb.cuda()
        results["torch CUDA (batch)"] = median_seconds(
            lambda: batched(ca, cb), args.repeats, sync=torch.cuda.synchronize
        )
    base = results["scikit-image (loop)"]
    print(f"{'method':<22}{'median s':>10}{'images/s':>10}{'speed-up':>10}")
    for name, seconds in results.items():
        print(f"{name:<22}{seconds:>10.4f}{args.images / seconds:>10.1f}{base / seconds:>10.2f}")


if __name__ == "__main__":
    main()
