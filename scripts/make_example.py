"""Write ``examples/blurry.png``: the README quick start's motion-blurred example photo.

A 512×384 crop of the photo pool's *validation* photo ``palapeli-european-honey-bee``
(never trained on) blurred with a random-trajectory camera-shake kernel from
``deblurcli.degradations`` at a fixed seed, so the file is reproducible byte for byte.
The crop is blurred with a margin of real context around it, then the margin is cut off.
Needs the photo pool: ``deblur data fetch && deblur data prepare``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from deblurcli.data.photo_pool import split_dir
from deblurcli.degradations import convolve, motion_kernel
from deblurcli.imageio import ImageData, read_image, write_image

PHOTO = "palapeli-european-honey-bee.png"
BOX = (100, 120, 512, 384)  # left, top, width, height in the prepared (downscaled) photo
SEED = 8
LENGTH = 13.0  # trajectory length in pixels: clearly blurred, still recoverable
MARGIN = 32
OUT = Path(__file__).resolve().parent.parent / "examples"


def make_example(photo: Path, out: Path) -> dict[str, object]:
    """Write ``blurry.png`` (and ``sharp.png``, the target) under ``out``; the record."""
    pixels = read_image(photo).pixels[..., :3]
    left, top, w, h = BOX
    region = pixels[top - MARGIN : top + h + MARGIN, left - MARGIN : left + w + MARGIN]
    kernel = motion_kernel(np.random.default_rng(SEED), size=31, length=LENGTH)
    blurred = np.clip(convolve(region, kernel), 0.0, 1.0)[MARGIN:-MARGIN, MARGIN:-MARGIN]
    sharp = region[MARGIN:-MARGIN, MARGIN:-MARGIN]
    write_image(out / "blurry.png", ImageData(blurred.astype(np.float32), bit_depth=8))
    write_image(out / "sharp.png", ImageData(np.ascontiguousarray(sharp), bit_depth=8))
    return {"photo": photo.name, "box": BOX, "seed": SEED, "length": LENGTH, "kernel": 31}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="folder of val photos [pool's val split]")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    folder = args.photos or split_dir("val")
    print(json.dumps(make_example(folder / PHOTO, args.out)))


if __name__ == "__main__":
    main()
