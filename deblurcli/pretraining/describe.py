"""What a trained model's manifest entry and card say about it.

The before/after picture, the restore speed, the benchmark rule, the training data, the
recipe the run really trained with, and the config overrides worth writing down.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deblurcli.archs import get_spec
from deblurcli.imageio import ImageData, find_images, read_image, write_image
from deblurcli.inference import restore_tensor
from deblurcli.inference.device import CPU_BF16_ATTR
from deblurcli.training.recipes import Recipe
from deblurcli.weights import load_model, read_metadata


def restore_speed(
    model_path: Path, size: tuple[int, int], threads: int, cpu_bf16: bool | None = None
) -> float:
    """Megapixels/s of ``deblur restore``'s default path (auto tiling, auto precision).

    ``cpu_bf16``: the model's manifest verdict, which auto precision follows on the CPU.
    """
    torch.set_num_threads(threads)
    model = load_model(model_path)
    setattr(model, CPU_BF16_ATTR, cpu_bf16)
    width, height = size
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    restore_tensor(model, image[..., :64, :64], device="cpu")  # warm-up
    start = time.perf_counter()
    restore_tensor(model, image, device="cpu")
    return width * height / 1e6 / (time.perf_counter() - start)


def before_after(model_path: Path, bench: Path, target: Path, crop: int = 160) -> str:
    """A [blurry | restored | sharp] strip of one motion-blurred benchmark crop at ``target``.

    Returns the crop's benchmark name.
    """
    sharp_files = find_images(bench / "sharp" / "motion") or find_images(bench / "sharp")
    rel = sharp_files[0].relative_to(bench / "sharp")
    sharp = read_image(sharp_files[0]).pixels[..., :3]
    blurred = read_image(bench / "blurred" / rel).pixels[..., :3]
    h, w = sharp.shape[:2]
    size = min(crop, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    sharp, blurred = (a[top : top + size, left : left + size] for a in (sharp, blurred))
    x = torch.from_numpy(np.ascontiguousarray(blurred.transpose(2, 0, 1)))[None].float()
    restored = restore_tensor(load_model(model_path), x, tile=0, device="cpu")
    restored = restored[0].numpy().transpose(1, 2, 0)
    gap = np.ones((size, 4, 3), np.float32)
    strip = np.concatenate([blurred, gap, restored, gap, sharp], axis=1).astype(np.float32)
    write_image(target, ImageData(np.clip(strip, 0, 1), bit_depth=8))
    return rel.as_posix()


def benchmark_rule(bench: Path) -> str:
    """How the benchmark at ``bench`` was built (its ``benchmark.json`` rule)."""
    try:
        info = json.loads((bench / "benchmark.json").read_text(encoding="utf-8"))
        return f"deblur eval --benchmark {info['rule']}, {info['pairs']} pairs"
    except (OSError, KeyError, ValueError):
        return "deblur eval --benchmark"


def dataset_text(
    train_photos: Path, patch_size: int, degrade: str, options: dict[str, Any] | None = None
) -> str:
    """The manifest's ``dataset``: the photos by name and how patches were made of them."""
    names = sorted(p.stem for p in find_images(train_photos))
    return (
        f"deblurcli photo pool, train split ({len(names)} photos: {', '.join(names)}); "
        f"{crops_text(patch_size, degrade, options)}"
    )


def crops_text(patch_size: int, degrade: str, options: dict[str, Any] | None = None) -> str:
    """How the training patches were made: crop size and the on-the-fly blur."""
    how = f"--degrade {degrade}"
    for key, value in (options or {}).items():
        how += f" --degrade-option {key}={json.dumps(value, separators=(',', ':'))}"
    return f"random {patch_size} px crops blurred on the fly ({how})"


def run_recipe(run: Path) -> str:
    """The recipe the run really trained with: its saved recipe, overrides and fallbacks."""
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))["recipe"]
    text = Recipe.from_dict(saved).describe()
    if read_metadata(run / "model.safetensors").get("perceptual") == "dropped":
        fallback = saved.get("perceptual_fallback")
        text += f"; no VGG19 weights: perceptual term {f'→ {fallback}' if fallback else 'dropped'}"
    return text


def config_overrides(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``config`` that differ from the registry default (None values dropped)."""
    default = get_spec(arch).default_config
    return {k: v for k, v in config.items() if v is not None and default.get(k) != v}
