"""Training datasets over sharp/blurred pairs: random crops, flips/rot90, on-the-fly blur.

Every random choice of a sample (crop, augmentation, synthetic blur) is drawn from a
generator seeded by the sample's key ``(index, (seed, epoch, rank, position))``, which
:class:`StepSampler` derives from the global step. The data stream is therefore a pure
function of the seed and the step, so ``--resume`` continues it exactly without saving any
loader state, and worker count does not change what is trained on.

Unreadable or mismatched pairs are skipped (the next pair is used instead) and reported by
name through the third item of each sample, so the trainer can list them at the end.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image
from torch.utils.data import Dataset, DistributedSampler, Sampler

from deblurcli import degradations
from deblurcli.errors import DeblurError, ImageReadError, UsageError
from deblurcli.imageio import find_images, read_image, to_tensor_layout

log = logging.getLogger(__name__)

SampleKey = tuple[int, tuple[int, ...]]
# A training crop whose sharp pixels vary less than this (std, [0, 1] units) counts as flat.
FLAT_CROP_STD = 0.02
_CROP_DRAWS = 8


# Validation views of one image, in crop sizes from the centre crop: the centre, the four
# diagonal neighbours, then the four edge neighbours (clamped to the image).
VIEW_OFFSETS = ((0, 0), (-1, -1), (1, 1), (-1, 1), (1, -1), (0, -1), (0, 1), (-1, 0), (1, 0))


@dataclass(frozen=True)
class Example:
    """One training image: a pair, or a sharp image blurred on the fly (``blurred=None``).

    ``view``: which validation crop of the image (an index into :data:`VIEW_OFFSETS`).
    """

    name: str
    sharp: Path
    blurred: Path | None = None
    view: int = 0

    @property
    def seed_name(self) -> str:
        """The name a validation blur is seeded by: view 0 keeps the image's own."""
        return self.name if self.view == 0 else f"{self.name}#{self.view}"


def with_views(examples: Sequence[Example], views: int) -> list[Example]:
    """Each example ``views`` times, as validation views 0..views-1 (image by image)."""
    if not 1 <= views <= len(VIEW_OFFSETS):
        raise UsageError(f"must be 1..{len(VIEW_OFFSETS)}, got {views}", option="val_crops")
    return [replace(e, view=v) for e in examples for v in range(views)]


class DataError(DeblurError):
    """No usable training data."""


def examples_from_pairs(pairs: Sequence[Any]) -> list[Example]:
    """Examples from :class:`deblurcli.data.pairs.Pair` objects."""
    return [Example(p.name, Path(p.sharp), Path(p.blurred)) for p in pairs]


def sharp_only_examples(folder: Path) -> list[Example]:
    """Every image under ``folder`` as a sharp-only example (for ``--degrade``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    images = find_images(folder)
    if not images:
        raise UsageError(f"{folder}: no images to degrade")
    return [Example(p.relative_to(folder).as_posix(), p) for p in images]


def name_fraction(name: str) -> float:
    """A stable number in [0, 1) from a name (same on every machine and process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_by_name(
    examples: Sequence[Example], fraction: float = 0.1
) -> tuple[list[Example], list[Example]]:
    """(train, val) split by a hash of each name; at least one of each when possible."""
    if len(examples) < 2:
        return list(examples), []
    ranked = sorted(examples, key=lambda e: name_fraction(e.name))
    n_val = sum(name_fraction(e.name) < fraction for e in ranked)
    n_val = min(max(n_val, 1), len(ranked) - 1)
    val = {e.name for e in ranked[:n_val]}
    return [e for e in examples if e.name not in val], [e for e in examples if e.name in val]


def probe(examples: Sequence[Example]) -> tuple[list[Example], list[str]]:
    """Header-only check (cheap): drop files that are not images or whose sizes differ."""
    good, problems = [], []
    for ex in examples:
        try:
            size = _header_size(ex.sharp)
            if ex.blurred is not None and _header_size(ex.blurred) != size:
                problems.append(f"{ex.name}: sharp and blurred sizes differ, skipped")
                continue
        except ImageReadError as exc:
            problems.append(f"{exc.for_cli()}, skipped")
            continue
        good.append(ex)
    return good, problems


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) as :func:`read_image` will return it, i.e. after EXIF orientation."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
            return (h, w) if turned else (w, h)
    except Exception as exc:  # Pillow raises many types for garbage
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__})") from None


def _augment(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        out.append(a[:, ::-1] if flip else a)
    return out


def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - arr.shape[0]), max(0, size - arr.shape[1])
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
    return arr


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_tensor_layout(np.ascontiguousarray(arr)))


class PairDataset(Dataset):
    """Random ``patch_size`` crops of examples, as (blurred, sharp, skipped-names) triples.

    ``degrade`` (a kind of :mod:`deblurcli.degradations`) synthesises the blurred image of
    sharp-only examples; pairs on disk are used as they are. With ``train=False`` the crop
    is the centre and there is no augmentation (validation). ``cache`` keeps decoded images
    in memory (per process), which pays off when the same files are cropped many times.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        patch_size: int,
        *,
        train: bool = True,
        degrade: str | None = None,
        degrade_options: Any = None,
        seed: int = 0,
        cache: bool = False,
    ):
        if not examples:
            raise DataError("no usable training images")
        self.examples = list(examples)
        self.patch_size = patch_size
        self.train = train
        self.degrade = degrade
        self.degrade_options = degrade_options
        self.seed = seed
        self.cache: dict[Path, np.ndarray] | None = {} if cache else None
        self.bad: set[int] = set()
        if degrade is not None:
            kinds = degradations.KINDS
            if degrade not in kinds:
                raise UsageError(
                    f"unknown {{option}} {degrade!r}; choose from {', '.join(kinds)}",
                    option="degrade",
                )
        if any(e.blurred is None for e in self.examples) and degrade is None:
            raise UsageError(
                "sharp-only images need {option} KIND to synthesise the blur", option="degrade"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, torch.Tensor, str]:
        index, rng_key = (key, (self.seed, key)) if isinstance(key, int) else key
        skipped = []
        for attempt in range(len(self.examples)):
            i = (index + attempt) % len(self.examples)
            if i in self.bad:
                continue
            try:
                blurred, sharp = self._load(i, np.random.default_rng(list(rng_key)))
            except (ImageReadError, ValueError) as exc:
                self.bad.add(i)
                skipped.append(self.examples[i].name)
                log.warning("%s; skipped", exc)
                continue
            return _to_tensor(blurred), _to_tensor(sharp), "|".join(skipped)
        raise DataError("every training image failed to load")

    def _read(self, path: Path) -> np.ndarray:
        if self.cache is not None and path in self.cache:
            return self.cache[path]
        pixels = read_image(path).pixels
        if self.cache is not None:
            self.cache[path] = pixels
        return pixels

    def _load(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ex = self.examples[i]
        sharp = self._read(ex.sharp)
        if ex.blurred is None:
            return self._synthesise(ex, sharp, rng)
        blurred = self._read(ex.blurred)
        if blurred.shape[:2] != sharp.shape[:2]:
            raise ValueError(f"{ex.name}: sharp and blurred sizes differ")
        if blurred.shape[2] != sharp.shape[2]:  # gray vs colour: compare in RGB
            sharp, blurred = _rgb(sharp), _rgb(blurred)
        return self._crop([blurred, sharp], rng, ex.view)

    def _crop(
        self, arrays: list[np.ndarray], rng: np.random.Generator, view: int = 0
    ) -> list[np.ndarray]:
        size = self.patch_size
        if self.train:
            arrays = [_pad_to(a, size) for a in arrays]
            y, x = _textured_origin(arrays[-1], size, rng)
        else:  # validation: the example's view, never padded (the model pads to its multiple)
            h, w = arrays[0].shape[:2]
            size = min(size, h, w)
            y, x = _view_origin(h, w, size, view)
        arrays = [a[y : y + size, x : x + size] for a in arrays]
        return _augment(arrays, rng) if self.train else arrays

    def _synthesise(
        self, ex: Example, sharp: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        # Blur a crop with a margin so the kernel sees real context, then cut the margin off.
        margin = self.patch_size // 4
        region = self._region(sharp, margin, rng, ex.view)
        if not self.train:  # validation blur depends only on the image name and view
            rng = np.random.default_rng(degradations.image_seed(self.seed, ex.seed_name))
        blurred = degradations.degrade(
            region, self.degrade, rng, self.degrade_options, margin
        ).image
        m = margin
        region = region[m : -m or None, m : -m or None]
        if blurred.ndim == 2:
            blurred = blurred[..., None]
        arrays = [blurred.astype(np.float32), region]
        return _augment(arrays, rng) if self.train else arrays

    def _region(
        self, sharp: np.ndarray, margin: int, rng: np.random.Generator, view: int = 0
    ) -> np.ndarray:
        big = self.patch_size + 2 * margin
        sharp = _pad_to(sharp, big)
        h, w = sharp.shape[:2]
        if self.train:
            y, x = _textured_origin(sharp, big, rng, inset=margin)
        else:
            y, x = _view_origin(h, w, big, view)
        return np.ascontiguousarray(sharp[y : y + big, x : x + big])


def _view_origin(h: int, w: int, size: int, view: int) -> tuple[int, int]:
    """Top-left corner of validation view ``view`` (a ``size`` crop of an H×W image)."""
    dy, dx = VIEW_OFFSETS[view]
    y = min(max((h - size) // 2 + dy * size, 0), h - size)
    x = min(max((w - size) // 2 + dx * size, 0), w - size)
    return y, x


def _textured_origin(
    sharp: np.ndarray, size: int, rng: np.random.Generator, inset: int = 0
) -> tuple[int, int]:
    """A random crop corner, redrawn (a few times) while the sharp crop is flat.

    ``inset``: a margin of the crop that is cut off later and so does not count.

    Flat crops (clear sky, bokeh, fog) look the same blurred or not and teach nothing; the
    most textured of the draws is kept when all are flat.
    """
    h, w = sharp.shape[:2]
    best, best_std = (0, 0), -1.0
    for _ in range(_CROP_DRAWS):
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        inner = sharp[y + inset : y + size - inset : 2, x + inset : x + size - inset : 2]
        std = float(inner.std())  # every 2nd pixel is enough to tell
        if std >= FLAT_CROP_STD:
            return y, x
        if std > best_std:
            best, best_std = (y, x), std
    return best


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


class StepSampler(Sampler[SampleKey]):
    """Endless stream of sample keys for one rank, starting at sample ``start``.

    Each epoch is a :class:`DistributedSampler` permutation (seeded by ``seed`` and the
    epoch), so ranks see disjoint shards; the position in the stream seeds the sample's
    crop and augmentation. Resuming at step ``s`` is ``start = s * batch_size``.
    """

    def __init__(self, n: int, *, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __len__(self) -> int:  # endless; DataLoader only needs this for len(loader)
        return 2**62

    def __iter__(self) -> Iterator[SampleKey]:
        shard = DistributedSampler(
            range(self.n), num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed
        )
        per_epoch = len(shard)
        epoch, offset = divmod(self.start, per_epoch)
        while True:
            shard.set_epoch(epoch)
            for pos, index in enumerate(shard):
                if pos >= offset:
                    yield index, (self.seed, epoch, self.rank, pos)
            epoch, offset = epoch + 1, 0


def estimated_bytes(examples: Sequence[Example]) -> int:
    """Decoded float32 size of all images (from headers), to decide on caching."""
    total = 0
    for ex in examples:
        for path in (ex.sharp, ex.blurred):
            if path is not None:
                w, h = _header_size(path)
                total += w * h * 3 * 4
    return total


def val_crop(patch_size: int, multiple: int, limit: int = 256) -> int:
    """Centre-crop size for validation: up to ``limit``, a multiple of the arch's multiple."""
    size = max(patch_size, limit)
    return max(multiple, math.floor(size / multiple) * multiple)
