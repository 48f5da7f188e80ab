"""Write ``examples/blurry.png``: the README quick start's motion-blurred example photo.

A 512×384 crop of the photo pool's *validation* photo ``palapeli-european-honey-bee``
(never trained on) blurred with a random-trajectory camera-shake kernel from
``deblurcli.degradations`` at a fixed seed, so the file is reproducible byte for byte.
The crop is blurred with a margin of real context around it, then the margin is cut off.
Needs the photo pool: ``deblur data fetch && deblur data prepare``.

``--before-after [MODEL]`` instead restores ``examples/blurry.png`` with MODEL (default: the
default pretrained model) and writes ``examples/before_after.png`` for the README: the same
256×256 region of the blurry input, the restored photo and the sharp original, side by side.
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


PANEL = (128, 64, 256, 256)  # left, top, width, height of the before/after region
GAP = 8


def before_after(folder: Path, model: str | None = None) -> dict[str, object]:
    """Write ``before_after.png`` (blurry | restored | sharp) under ``folder``; PSNRs."""
    import torch

    from deblurcli import load_model, psnr, restore_tensor
    from deblurcli.weights import default_model_name

    blurry = read_image(folder / "blurry.png").pixels[..., :3]
    sharp = read_image(folder / "sharp.png").pixels[..., :3]
    x = torch.from_numpy(np.ascontiguousarray(blurry.transpose(2, 0, 1)))[None].float()
    restored = restore_tensor(load_model(model), x, device="cpu")[0].numpy().transpose(1, 2, 0)
    left, top, w, h = PANEL
    panels = [a[top : top + h, left : left + w] for a in (blurry, restored, sharp)]
    gap = np.ones((h, GAP, 3), np.float32)
    strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    write_image(folder / "before_after.png", ImageData(strip.astype(np.float32), bit_depth=8))
    return {
        "model": model or default_model_name(),
        "blurry_psnr": round(_psnr(blurry, sharp, psnr), 2),
        "restored_psnr": round(_psnr(restored, sharp, psnr), 2),
    }


def _psnr(a: np.ndarray, b: np.ndarray, psnr) -> float:
    import torch

    as_tensor = (torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None] for x in (a, b))
    return float(psnr(*as_tensor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="folder of val photos [pool's val split]")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--before-after",
        nargs="?",
        const="",
        metavar="MODEL",
        help="write before_after.png with MODEL [the default pretrained model]",
    )
    args = parser.parse_args()
    if args.before_after is not None:
        print(json.dumps(before_after(args.out, args.before_after or None)))
        return
    folder = args.photos or split_dir("val")
    print(json.dumps(make_example(folder / PHOTO, args.out)))


if __name__ == "__main__":
    main()
