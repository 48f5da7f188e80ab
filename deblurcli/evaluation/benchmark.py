"""The built-in benchmark behind ``deblur eval --benchmark``.

Rule (version :data:`VERSION`, documented in docs/evaluation.md):

* Source photos: the photo pool's held-out ``val`` split (``photo_pool.split_dir("val")``;
  the split is by photo, so no training crop comes from these photos), or any folder given
  as ``--benchmark-photos``. The first :data:`MAX_PHOTOS` images in sorted path order are used.
* Each photo gives one centred square crop of :data:`CROP` pixels (smaller photos give their
  largest centred square; photos under :data:`MIN_SIDE` pixels are skipped).
* Every crop appears in each family, degraded with ``np.random.default_rng(image_seed(SEED,
  "<family>/<rel>"))``: ``gaussian`` (Gaussian blur, no noise), ``motion`` (random-trajectory
  motion blur, no noise), ``noisy`` (motion blur + Gaussian noise, sigma 0.01-0.03).
  These three (:data:`FAMILIES`) are the benchmark the quality bars are measured on.
* Opt-in families (:data:`OPTIONAL_FAMILIES`, ``--benchmark-family``): ``camera``, the
  ``camera`` degradation (spatially varying shake in linear light with saturated highlights,
  camera noise, the sRGB curve, JPEG), the nearest synthetic stand-in for a handheld photo. A
  family's pairs do not depend on which other families are built with it.
* Written in the ``deblur blur`` layout (``sharp/<family>/<rel>``, ``blurred/...``,
  ``kernels/...npy``, ``manifest.jsonl`` with ``family``), so the Wiener baseline finds the
  true kernels.

It is built once into a cache folder keyed by the rule version and the source file list
(names and sizes): into a temporary sibling, renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from deblurcli.errors import UsageError
from deblurcli.imageio import ImageData, atomic_path, find_images, read_image, write_image
from deblurcli.locks import FolderBusyError, output_lock

BUILD_PREFIX = ".build-"  # a folder being built; one left behind by a killed build is stale
VERSION = 1
SEED = 2026
CROP = 256
MIN_SIDE = 32
MAX_PHOTOS = 32
FAMILIES = ("gaussian", "motion", "noisy")  # the default: what the quality bars are measured on
OPTIONAL_FAMILIES = ("camera",)
KNOWN_FAMILIES = FAMILIES + OPTIONAL_FAMILIES


def rule(families: tuple[str, ...] = FAMILIES) -> str:
    """The benchmark's rule text for ``families`` (part of its cache key)."""
    return (
        f"v{VERSION}: first {MAX_PHOTOS} held-out photos (sorted), centred {CROP}x{CROP} crop, "
        f"each in families {', '.join(families)}; seed image_seed({SEED}, '<family>/<rel>')"
    )


def benchmark_families(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``names`` checked and in the canonical order (:data:`KNOWN_FAMILIES`); None: the default."""
    if not names:
        return FAMILIES
    unknown = sorted(set(names) - set(KNOWN_FAMILIES))
    if unknown:
        raise UsageError(
            f"unknown {{option}} {', '.join(unknown)}; choose from {', '.join(KNOWN_FAMILIES)}",
            option="benchmark_family",
        )
    return tuple(f for f in KNOWN_FAMILIES if f in names)


def _family_degradation(family: str):
    """(kind, DegradeOptions) of a benchmark family."""
    from deblurcli.degradations import DegradeOptions

    if family in ("gaussian", "motion", "camera"):
        return family, DegradeOptions()
    if family == "noisy":
        noisy = DegradeOptions(noise_prob=1.0, noise_types=("gaussian",), noise_sigma=(0.01, 0.03))
        return "motion", noisy
    raise ValueError(family)


def cache_root() -> Path:
    """``$DEBLURCLI_CACHE/benchmark`` (default ``~/.cache/deblurcli/benchmark``)."""
    base = os.environ.get("DEBLURCLI_CACHE") or Path.home() / ".cache" / "deblurcli"
    return Path(base) / "benchmark"


def _source_photos(photos: Path | None) -> tuple[Path, list[Path]]:
    if photos is None:
        from deblurcli.data.photo_pool import split_dir

        photos = split_dir("val")
    if not Path(photos).is_dir():
        raise UsageError(f"{photos}: not a folder of photos")
    found = find_images(photos)[:MAX_PHOTOS]
    if not found:
        raise UsageError(f"{photos}: no photos to build the benchmark from")
    return Path(photos), found


def _cache_key(source: Path, files: list[Path], families: tuple[str, ...]) -> str:
    listing = [(p.relative_to(source).as_posix(), p.stat().st_size) for p in files]
    text = json.dumps({"rule": rule(families), "files": listing})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    side = min(size, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(pixels[top : top + side, left : left + side])


def _build(source: Path, files: list[Path], out: Path, families: tuple[str, ...]) -> int:
    from deblurcli.degradations import degrade, image_seed

    records = []
    for path in files:
        data = read_image(path)
        if min(data.pixels.shape[:2]) < MIN_SIDE:
            continue
        crop = _centre_crop(data.pixels, CROP)
        rel = path.relative_to(source).with_suffix(".png").as_posix()
        sharp = ImageData(crop, bit_depth=8)
        for family in families:
            name = f"{family}/{rel}"
            kind, options = _family_degradation(family)
            seed = image_seed(SEED, name)
            result = degrade(crop, kind, np.random.default_rng(seed), options)
            write_image(out / "sharp" / name, sharp)
            write_image(out / "blurred" / name, ImageData(result.image, bit_depth=8))
            kernel = None
            if result.kernel is not None:
                kernel = f"kernels/{name}.npy"
                with atomic_path(out / kernel) as tmp, open(tmp, "wb") as f:
                    np.save(f, result.kernel.astype(np.float32), allow_pickle=False)
            record = dict(result.record)
            record.update(path=name, family=family, kind=kind, seed=seed, kernel=kernel)
            record["source"] = path.relative_to(source).as_posix()
            records.append(record)
    if not records:
        raise UsageError(f"{source}: no photo is at least {MIN_SIDE}x{MIN_SIDE} pixels")
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    (out / "manifest.jsonl").write_text(lines, encoding="utf-8")
    info = {"rule": rule(families), "source": str(source), "pairs": len(records)}
    (out / "benchmark.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return len(records)


def ensure_benchmark(
    photos: str | Path | None = None,
    cache: str | Path | None = None,
    families: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """The benchmark dataset folder, built first if it is not cached yet.

    ``families``: among :data:`KNOWN_FAMILIES`; None means :data:`FAMILIES`.
    """
    chosen = benchmark_families(families)
    source, files = _source_photos(Path(photos) if photos is not None else None)
    root = Path(cache) if cache is not None else cache_root()
    final = root / f"v{VERSION}-{_cache_key(source, files, chosen)}"
    if (final / "manifest.jsonl").is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(root)
        tmp = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=root))
    except OSError as exc:
        raise UsageError(
            f"{root}: cannot create the benchmark cache there ({exc.strerror}); "
            "choose another {option} or set DEBLURCLI_CACHE",
            option="benchmark_dir",
        ) from None
    try:
        with output_lock(tmp, "benchmark build"):  # marks it live for _remove_stale_builds
            _build(source, files, tmp, chosen)
        try:
            os.replace(tmp, final)
        except OSError:  # built concurrently by another process: theirs is as good
            if not (final / "manifest.jsonl").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale_builds(root: Path) -> None:
    """Delete the half-built folders of killed builds (a live build holds its folder's lock)."""
    for old in root.glob(f"{BUILD_PREFIX}*"):
        try:
            with output_lock(old, "benchmark build"):
                shutil.rmtree(old, ignore_errors=True)
        except (FolderBusyError, OSError):
            continue  # being built right now by another process
