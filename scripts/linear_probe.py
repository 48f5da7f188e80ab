"""The best linear filter for a training blur, scored on the benchmark (issue 13, Part A2).

A pipeline check that needs no training run. Unsharp masking is a linear filter, so the
least-squares K×K filter fitted to the training pairs of a blur kind (the photo pool's
train split, blurred on the fly exactly as ``deblur train --degrade KIND`` does) should be
at least as good as the tuned unsharp mask on that kind's benchmark family. Two fits:

* ``mse``: plain least squares, what an L1/L2 training loss asks for;
* ``psnr``: iteratively reweighted least squares with weights 1/MSE per patch, which
  minimises the mean of log MSE, i.e. maximises the mean PSNR gain: what the benchmark scores.

Each is scored on the built-in benchmark (``deblur eval --benchmark``'s pairs) and on fresh
crops of the val photos blurred in memory, next to unsharp masking at its default setting.

    python scripts/linear_probe.py --kind gaussian --size 15
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from deblurcli.data.photo_pool import split_dir
from deblurcli.degradations import DegradeOptions, degrade
from deblurcli.evaluation.benchmark import FAMILIES, ensure_benchmark
from deblurcli.imageio import find_images, read_image
from deblurcli.inference.classical import unsharp_mask
from deblurcli.metrics import psnr

PATCH, MARGIN = 96, 24  # the margin is blur context, as training crops have
SUBSAMPLE = 7  # every 7th pixel of a patch enters the fit: neighbours are nearly redundant


def _crops(photos: list[np.ndarray], kind: str, n: int, rng: np.random.Generator):
    """``n`` (blurred, sharp) training-like crops of PATCH² pixels."""
    usable = [p for p in photos if min(p.shape[:2]) >= PATCH + 2 * MARGIN]
    for _ in range(n):
        image = usable[rng.integers(len(usable))]
        h, w = image.shape[:2]
        top = rng.integers(0, h - PATCH - 2 * MARGIN + 1)
        left = rng.integers(0, w - PATCH - 2 * MARGIN + 1)
        crop = image[top : top + PATCH + 2 * MARGIN, left : left + PATCH + 2 * MARGIN]
        blurred = degrade(crop, kind, rng, DegradeOptions(), inset=MARGIN).image
        yield blurred, crop[MARGIN:-MARGIN, MARGIN:-MARGIN]


def _design(blurred: np.ndarray, sharp: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of K×K neighbourhoods (every channel) and the sharp centre pixel of each."""
    r = size // 2
    rows = [
        sliding_window_view(blurred[..., c], (size, size)).reshape(-1, size * size)[::SUBSAMPLE]
        for c in range(blurred.shape[2])
    ]
    targets = [sharp[r:-r, r:-r, c].reshape(-1)[::SUBSAMPLE] for c in range(sharp.shape[2])]
    return np.concatenate(rows).astype(np.float64), np.concatenate(targets).astype(np.float64)


def fit(designs: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares filter (flattened) over all patches."""
    n = designs[0][0].shape[1]
    gram, rhs = np.zeros((n, n)), np.zeros(n)
    for weight, (rows, target) in zip(weights, designs, strict=True):
        gram += weight * rows.T @ rows
        rhs += weight * rows.T @ target
    return np.linalg.solve(gram + 1e-9 * np.trace(gram) * np.eye(n), rhs)


def fit_both(designs: list[tuple[np.ndarray, np.ndarray]], rounds: int) -> dict[str, np.ndarray]:
    """The MSE fit, and the PSNR fit after ``rounds`` reweightings by 1/MSE."""
    mse_filter = fit(designs, np.ones(len(designs)))
    psnr_filter = mse_filter
    for _ in range(rounds):
        errors = np.array([np.mean((rows @ psnr_filter - t) ** 2) for rows, t in designs])
        psnr_filter = fit(designs, 1.0 / np.maximum(errors, 1e-8))
    return {"mse": mse_filter, "psnr": psnr_filter}


def _gain(restored: np.ndarray, blurred: np.ndarray, sharp: np.ndarray) -> float:
    """PSNR gain in dB, measured as ``deblur eval`` does (the project's metric, clipped)."""
    target = torch.from_numpy(sharp)

    def score(x: np.ndarray) -> float:
        return float(psnr(torch.from_numpy(np.clip(x, 0, 1)), target)[0])

    return score(restored) - score(blurred)


def methods(filters: dict[str, np.ndarray], size: int):
    """name -> restoration function: each linear fit, and unsharp masking at the setting
    ``deblur restore --model unsharp`` uses (sigma 1.2, amount 1.0)."""
    out = {
        name: lambda x, k=f.reshape(size, size).astype(np.float32): cv2.filter2D(
            x, -1, k, borderType=cv2.BORDER_REFLECT
        )
        for name, f in filters.items()
    }
    out["unsharp"] = lambda x: unsharp_mask(x, 1.2, 1.0)
    return out


def score_benchmark(bench: Path, restore) -> dict[str, float]:
    """Mean PSNR gain per benchmark family."""
    gains = {}
    for family in FAMILIES:
        sharp_dir = bench / "sharp" / family
        values = []
        for path in sorted(sharp_dir.rglob("*.png")):
            sharp = read_image(path).pixels
            blurred = read_image(bench / "blurred" / family / path.relative_to(sharp_dir)).pixels
            values.append(_gain(restore(blurred), blurred, sharp))
        gains[family] = float(np.mean(values))
    return gains


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="gaussian", help="Blur kind, as --degrade.")
    p.add_argument("--size", type=int, default=15, help="Filter size K (odd).")
    p.add_argument("--patches", type=int, default=1200, help="Training crops in the fit.")
    p.add_argument("--rounds", type=int, default=5, help="Reweighting rounds of the PSNR fit.")
    p.add_argument("--train-photos", type=Path, default=None, help="[photo pool train split]")
    p.add_argument("--val-photos", type=Path, default=None, help="[photo pool val split]")
    p.add_argument("--benchmark-dir", type=Path, default=None, help="[the eval cache]")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train = [read_image(f).pixels for f in find_images(args.train_photos or split_dir("train"))]
    val_dir = args.val_photos or split_dir("val")
    rng = np.random.default_rng(args.seed)
    designs = [_design(b, s, args.size) for b, s in _crops(train, args.kind, args.patches, rng)]
    restorers = methods(fit_both(designs, args.rounds), args.size)
    bench = ensure_benchmark(val_dir, args.benchmark_dir)
    val = [read_image(f).pixels for f in find_images(val_dir)]
    val_pairs = list(_crops(val, args.kind, 8 * len(val), np.random.default_rng(args.seed + 1)))
    print(f"training blur {args.kind!r}, {args.size}x{args.size} filters, PSNR gain in dB")
    print(f"{'method':16s} " + " ".join(f"{f:>9s}" for f in FAMILIES) + "  val crops")
    for name, restore in restorers.items():
        bench_gains = score_benchmark(bench, restore)
        val_gain = np.mean([_gain(restore(b), b, s) for b, s in val_pairs])
        cells = " ".join(f"{bench_gains[f]:+9.2f}" for f in FAMILIES)
        print(f"{name:16s} {cells}  {val_gain:+9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
