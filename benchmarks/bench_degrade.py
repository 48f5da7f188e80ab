"""Training patches per second per core for every ``--degrade`` family.

What one DataLoader worker does per sample of ``deblur train --degrade KIND``: a textured
crop of ``patch + 2·patch/4`` pixels from a decoded (cached) photo, the degradation, the margin
cut off, flips/rot90 and the tensors (:class:`deblurcli.data.dataset.PairDataset`). One
thread (OpenCV and torch), families timed round-robin in one process, median over rounds.

    python benchmarks/bench_degrade.py             # 128² patches, 60 samples × 5 rounds
    python benchmarks/bench_degrade.py --quick     # 20 samples × 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch
from bench_blur import make_photos

from deblurcli.data.dataset import PairDataset, sharp_only_examples
from deblurcli.degradations import KINDS, DegradeOptions

# mix before the camera kind joined it, for the cost of the change
OLD_MIX = DegradeOptions(
    mix_weights={"motion": 0.40, "gaussian": 0.30, "defocus": 0.15, "linear_motion": 0.15}
)


def rate(data: PairDataset, start: int, count: int) -> float:
    """Samples per second over ``count`` consecutive sample keys."""
    began = time.perf_counter()
    for i in range(start, start + count):
        data[(i % len(data), (0, 0, 0, i))]
    return count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 samples × 3 rounds")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    samples = args.samples or (20 if args.quick else 60)
    rounds = args.rounds or (3 if args.quick else 5)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_degrade_") as tmp:
        make_photos(Path(tmp), 8)
        examples = sharp_only_examples(Path(tmp))
        datasets = {
            kind: PairDataset(examples, args.patch, degrade=kind, cache=True) for kind in KINDS
        }
        datasets["mix (old weights)"] = PairDataset(
            examples, args.patch, degrade="mix", degrade_options=OLD_MIX, cache=True
        )
        for data in datasets.values():
            rate(data, 0, len(examples))  # decode into the cache: not part of the figure
        rates: dict[str, list[float]] = {kind: [] for kind in datasets}
        for r in range(rounds):
            for kind, data in datasets.items():
                rates[kind].append(rate(data, r * samples, samples))
    margin = args.patch // 4
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{args.patch}² patches (degraded at {args.patch + 2 * margin}² with the margin), "
        f"1 thread, {samples} samples × {rounds} rounds, load {load}"
    )
    print("| family | patches/s per core | ms/patch | vs motion |")
    print("|---|---|---|---|")
    median = {kind: statistics.median(v) for kind, v in rates.items()}
    for kind in rates:
        slower = median["motion"] / median[kind]
        print(f"| {kind} | {median[kind]:.0f} | {1e3 / median[kind]:.1f} | {slower:.2f}× |")


if __name__ == "__main__":
    main()
