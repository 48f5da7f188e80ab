"""Training throughput per architecture: chosen CPU settings vs a naive baseline.

Run: python benchmarks/bench_train.py [--quick] [--archs a,b] [--steps N]

Both configurations train the same small-width model on the same generated dataset
(PNG pairs on disk) and are measured side by side in one run:

* naive: fp32, contiguous tensors, images decoded in the training process each step;
* chosen: what ``deblur train`` picks on this CPU (bf16 autocast + channels_last where
  measured faster, see deblurcli/training/precision.py), decoded images cached, and
  DataLoader workers decoding/cropping in parallel.

Steps of the two are interleaved (the machine is shared). Prints patches/s (median) and
the chosen/naive ratio per architecture.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from deblurcli.archs import list_archs, loading_config
from deblurcli.imageio import ImageData, write_image
from deblurcli.training.precision import resolve
from deblurcli.training.trainer import TrainConfig, Trainer

SMALL = {
    "skipae": {"width": 16},
    "edgenet": {"edge_widths": [16, 32, 64], "edge_convs": [1, 1, 2], "deblur_base": 16},
    "deblurgan": {"ngf": 16, "n_blocks": 3},
    "resnetencdec": {"encoder": "resnet18", "decoder_channels": [64, 32, 16, 16, 16]},
    "transformnet": {"base": 16, "n_blocks": 3},
    "simplecnn": {"widths": [16, 32, 64, 64, 32, 16]},
}
CRITIC = {"deblurgan": {"ndf": 16}, "skipae": {"width": 16}}


def make_dataset(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        base = cv2.resize(rng.random((size // 8, size // 8, 3), dtype=np.float32), (size, size))
        sharp = np.clip(base + rng.normal(0, 0.03, base.shape).astype(np.float32), 0, 1)
        write_image(root / "sharp" / f"{i:03d}.png", ImageData(sharp))
        write_image(root / "blurred" / f"{i:03d}.png", ImageData(cv2.blur(sharp, (9, 9))))
    return root


class _Runner:
    """A trainer and its batch stream, timed one (load + step) at a time."""

    def __init__(self, cfg: TrainConfig, warmup: int):
        self.trainer = Trainer(cfg)
        self.batches = self.trainer._loader()
        self.batch_size = cfg.batch_size
        for _ in range(warmup):
            self.trainer.train_step(next(self.batches))

    def timed_step(self) -> float:
        start = time.perf_counter()
        self.trainer.train_step(next(self.batches))
        return time.perf_counter() - start


def measure(naive: TrainConfig, chosen: TrainConfig, steps: int) -> tuple[float, float]:
    """Median patches/s of both, their steps interleaved so both see the same machine load."""
    runners = [_Runner(naive, 1), _Runner(chosen, 2)]
    times: list[list[float]] = [[], []]
    for _ in range(steps):
        for runner, out in zip(runners, times, strict=True):
            out.append(runner.timed_step())
    return tuple(r.batch_size / statistics.median(t) for r, t in zip(runners, times, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller steps")
    parser.add_argument("--archs", default=",".join(list_archs()))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    patch, batch = (64, 4) if args.quick else (64, 8)
    steps = args.steps or (3 if args.quick else 6)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"patch {patch}, batch {batch}"
    )
    print(f"{'arch':<14}{'naive p/s':>11}{'chosen p/s':>12}{'ratio':>8}  chosen settings")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", n=8, size=256 if args.quick else 512)
        for arch in args.archs.split(","):
            common = dict(
                arch=arch,
                data=data,
                arch_config=loading_config(arch, SMALL[arch]),
                critic_config=CRITIC.get(arch, {}),
                patch_size=patch,
                batch_size=batch,
                steps=1000,
                n_critic=1,
                device="cpu",
            )
            naive = TrainConfig(
                out=Path(tmp) / f"{arch}-naive",
                precision="fp32",
                channels_last=False,
                workers=0,
                cache=False,
                **common,
            )
            chosen = TrainConfig(out=Path(tmp) / f"{arch}-chosen", workers=args.workers, **common)
            base, fast = measure(naive, chosen, steps)
            prec = resolve(arch, torch.device("cpu"))
            desc = f"{prec.name}{' + channels_last' if prec.channels_last else ''}"
            print(
                f"{arch:<14}{base:>11.1f}{fast:>12.1f}{fast / base:>7.2f}×  {desc}, "
                f"{args.workers} workers, cache",
                flush=True,
            )


if __name__ == "__main__":
    main()
