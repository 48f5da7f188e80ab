"""``deblur blur`` throughput vs the one-process PIL/OpenCV loop the seed write-ups used.

Generates N photo-like 512×512 PNGs in a temporary folder, then times, round-robin:

* baseline: one process; PIL decode, a 50/50 Gaussian/motion choice per image (PIL
  ``GaussianBlur`` or ``cv2.filter2D`` with a trajectory kernel), PIL PNG save (default
  level 6) of the blurred image, ``shutil.copyfile`` of the sharp one;
* ``synthesize_dataset`` with the same 50/50 mixture (seed 000's recipe), 1 worker and all
  cores; it also writes kernels and the manifest and works in float32.

Prints images/s (median over rounds), the ratio, and a per-stage breakdown in milliseconds.

    python benchmarks/bench_blur.py            # 200 images, 3 rounds
    python benchmarks/bench_blur.py --quick    # 40 images, 2 rounds
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFilter

from deblurcli.degradations import DegradeOptions, convolve, synthesize_dataset
from deblurcli.degradations.dataset import PNG_COMPRESS_LEVEL, _default_workers
from deblurcli.degradations.degrade import _sample_kernel
from deblurcli.imageio import encode_image, read_image

SEED000 = DegradeOptions(mix_weights={"motion": 0.5, "gaussian": 0.5}, mix_noise_prob=0.0,
                         mix_jpeg_prob=0.0)  # fmt: skip


def make_photos(folder: Path, count: int, size: int = 512) -> None:
    """Smooth colour fields + discs + sensor-like grain: compresses like a photo, not a flat."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        img = cv2.resize(rng.random((8, 8, 3), np.float32), (size, size), cv2.INTER_CUBIC)
        for _ in range(12):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(10, size / 5)]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.random(3)
        img += rng.normal(0, 0.02, img.shape).astype(np.float32)
        u8 = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(u8).save(folder / f"{i:04d}.png")


def baseline(src: Path, out: Path) -> None:
    """What the seed write-ups did: one process, PIL + cv2.filter2D, PIL PNG save."""
    (out / "blurred").mkdir(parents=True, exist_ok=True)
    (out / "sharp").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for path in sorted(src.glob("*.png")):
        im = Image.open(path).convert("RGB")
        if rng.uniform() < 0.5:
            blurred = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 3.0))))
        else:
            kernel, _ = _sample_kernel("motion", rng, SEED000)
            blurred = Image.fromarray(cv2.filter2D(np.asarray(im), -1, kernel[::-1, ::-1]))
        blurred.save(out / "blurred" / path.name)
        shutil.copyfile(path, out / "sharp" / path.name)


def ours(src: Path, out: Path, workers: int) -> None:
    summary = synthesize_dataset(src, out, "mix", seed=0, options=SEED000, workers=workers)
    assert summary.ok and summary.written > 0


def _cpu() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children)."""
    start, cpu = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - start, _cpu() - cpu


def breakdown(src: Path, count: int) -> None:
    """Median ms per stage, one process, over ``count`` images."""
    stages: dict[str, list[float]] = {}

    def clock(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        stages.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
        return value

    cv2.setNumThreads(1)
    sizes = {PNG_COMPRESS_LEVEL: 0, 6: 0}
    for i, path in enumerate(sorted(src.glob("*.png"))[:count]):
        rng = np.random.default_rng(i)
        data = clock("decode (read_image)", read_image, path)
        im = clock("decode (PIL baseline)", lambda p: Image.open(p).convert("RGB"), path)
        for blur in ("motion", "gaussian"):
            kernel, _ = clock(f"kernel gen {blur}", _sample_kernel, blur, rng, SEED000)
            clock(f"convolve {blur} (ours, auto)", convolve, data.pixels, kernel)
            clock(f"convolve {blur} filter2D", convolve, data.pixels, kernel, "filter2d")
            clock(f"convolve {blur} NumPy FFT", convolve, data.pixels, kernel, "fft")
        blurred = data.with_pixels(convolve(data.pixels, kernel))
        gaussian = ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 3.0)))
        clock("convolve gaussian (PIL baseline)", im.filter, gaussian)
        for level in sizes:
            name = f"encode blurred PNG level {level}"
            sizes[level] += len(clock(name, encode_image, blurred, "PNG", png_compress_level=level))
    print(f"\nwhere the time goes (one process, median ms per image over {count} images):")
    for name, values in stages.items():
        print(f"  {name:36s} {statistics.median(values):8.2f}")
    ratio = sizes[PNG_COMPRESS_LEVEL] / sizes[6]
    print(f"  PNG level {PNG_COMPRESS_LEVEL} files are {ratio:.2f}× the size of level 6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 images, 2 rounds")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    count = args.images or (40 if args.quick else 200)
    rounds = args.rounds or (2 if args.quick else 3)
    workers = _default_workers()
    with tempfile.TemporaryDirectory(prefix="bench_blur_") as tmp:
        src = Path(tmp) / "src"
        make_photos(src, count)
        runs: dict[str, Callable[[Path], None]] = {
            "baseline PIL/cv2 loop": lambda out: baseline(src, out),
            "deblur blur, 1 worker": lambda out: ours(src, out, 1),
            f"deblur blur, {workers} workers": lambda out: ours(src, out, workers),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for r in range(rounds):
            for i, (name, fn) in enumerate(runs.items()):
                out = Path(tmp) / f"out-{r}-{i}"
                times[name].append(timed(lambda f=fn, o=out: f(o)))
                shutil.rmtree(out)
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"{count} images of 512×512, {rounds} rounds, {workers} cores, load {load}")
        rate = {n: count / statistics.median(w for w, _ in t) for n, t in times.items()}
        cpu = {n: statistics.median(c for _, c in t) / count * 1e3 for n, t in times.items()}
        base = "baseline PIL/cv2 loop"
        for name in runs:
            print(
                f"  {name:28s} {rate[name]:7.1f} images/s  {rate[name] / rate[base]:5.2f}× "
                f"baseline   {cpu[name]:6.1f} CPU ms/image ({cpu[base] / cpu[name]:.2f}× less)"
            )
        breakdown(src, min(count, 20))


if __name__ == "__main__":
    main()
