"""A run's data: the training and validation sets a :class:`TrainConfig` names, and the loader.

``--data`` is a folder of sharp/blurred pairs, or with ``--degrade`` sharp images blurred on the
fly; ``--val`` names a separate validation folder, else a fixed share of the names is held out.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from deblurcli._process import die_with_parent
from deblurcli.data import dataset as ds
from deblurcli.errors import Note, UsageError
from deblurcli.imageio import find_images
from deblurcli.training.config import TrainConfig
from deblurcli.training.distributed import DistInfo

log = logging.getLogger(__name__)
_CACHE_BYTES = 1 << 30  # decoded training images are kept in memory below this (all workers)
_VAL_CACHE_BYTES = 256 << 20
VAL_SEED = 0  # seeds the validation blur: fixed, not the run's --seed


@dataclass
class RunData:
    """The datasets of a run and the inputs that were skipped (``"name: why"`` lines)."""

    train_set: ds.PairDataset
    val_set: ds.PairDataset | None
    problems: list[str] = field(default_factory=list)


def build_data(cfg: TrainConfig, multiple: int) -> RunData:
    """The training and validation sets; ``multiple``: the model's size multiple."""
    options = degrade_options(cfg)  # a bad setting fails before any image is read
    problems: list[str] = []
    examples, bad = ds.probe(_training_examples(cfg, problems))
    problems += bad
    if cfg.val is not None:
        train_examples, val_examples = examples, _val_examples(cfg, cfg.val, problems)
    else:
        train_examples, val_examples = ds.split_by_name(examples, cfg.val_fraction)
    if not train_examples:
        raise ds.DataError("no readable training pairs (see the problems above)")
    cache = cfg.cache
    if cache is None:
        cache = ds.estimated_bytes(train_examples) * max(1, cfg.workers) < _CACHE_BYTES
    train_set = ds.PairDataset(
        train_examples,
        cfg.patch_size,
        degrade=cfg.degrade,
        degrade_options=options,
        seed=cfg.seed,
        cache=cache,
    )
    return RunData(train_set, _val_set(cfg, val_examples, multiple, options), problems)


def restaged(train_set: ds.PairDataset, degrade: str) -> ds.PairDataset:
    """``train_set`` blurred on the fly with another kind at its default settings: a
    curriculum's stage (the same photos, crops and sample keys, another blur)."""
    if train_set.degrade is None:
        raise UsageError(
            "a blur stage needs sharp photos blurred on the fly ({option})", option="degrade"
        )
    return ds.PairDataset(
        train_set.examples,
        train_set.patch_size,
        degrade=degrade,
        seed=train_set.seed,
        cache=train_set.cache is not None,
    )


def degrade_options(cfg: TrainConfig) -> Any:
    """The run's ``DegradeOptions`` (None: the defaults); its overrides need ``degrade``."""
    if not cfg.degrade_options:
        return None
    if not cfg.degrade:
        raise UsageError(
            "{degrade_option} needs {degrade} KIND", mentions=("degrade_option", "degrade")
        )
    from deblurcli.degradations import DegradeOptions

    return DegradeOptions().with_overrides(cfg.degrade_options)


def _training_examples(cfg: TrainConfig, problems: list[str]) -> list[ds.Example]:
    if cfg.degrade:
        if cfg.data is None:
            raise UsageError(
                "{degrade} needs {data} DIR of sharp images", mentions=("degrade", "data")
            )
        return degrade_sources(cfg.data)
    from deblurcli.data.pairs import find_pairs

    if cfg.sharp is not None or cfg.blurred is not None:
        scan = find_pairs(cfg.data, sharp=cfg.sharp, blurred=cfg.blurred)
    else:
        scan = find_pairs_or_hint(cfg.data)
    problems += scan.problems
    return ds.examples_from_pairs(scan.pairs)


def _val_examples(cfg: TrainConfig, folder: Path, problems: list[str]) -> list[ds.Example]:
    if cfg.degrade:
        return degrade_sources(folder)
    from deblurcli.data.pairs import find_pairs

    good, bad = ds.probe(ds.examples_from_pairs(find_pairs(folder).pairs))
    problems += bad
    return good


def _val_set(cfg: TrainConfig, examples: list[ds.Example], multiple: int, options: Any) -> Any:
    if not examples:
        return None
    chosen = examples[: cfg.val_images]
    return ds.PairDataset(
        ds.with_views(chosen, cfg.val_crops),
        ds.val_crop(cfg.patch_size, multiple),
        train=False,
        degrade=cfg.degrade,
        degrade_options=options,
        seed=VAL_SEED,  # the same pairs whatever --seed, so that runs of any seeds compare
        cache=ds.estimated_bytes(chosen) < _VAL_CACHE_BYTES,
    )


def train_batches(
    train_set: ds.PairDataset, cfg: TrainConfig, *, step: int, dist: DistInfo, pin: bool
) -> Iterator[Any]:
    """The endless stream of batches from ``step`` on (this rank's share)."""
    sampler = ds.StepSampler(
        len(train_set),
        seed=cfg.seed,
        start=step * cfg.batch_size,
        rank=dist.rank,
        world=dist.world,
    )
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=pin,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=4 if cfg.workers > 0 else None,
        worker_init_fn=functools.partial(_worker_init, os.getpid()),
        # spawn: a worker forked from a process whose OpenMP/OpenCV thread pools are
        # running can deadlock on an inherited lock (seen with cv2 in tests). Not
        # forkserver: its workers are the server's children, so their parent watchdog
        # misses a killed trainer and they (and the server) linger forever.
        multiprocessing_context="spawn" if cfg.workers > 0 else None,
        # Its own generator: drawing worker seeds from the global RNG would shift the
        # dropout/GP random stream on --resume (samples are seeded by their keys anyway).
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return iter(loader)


def find_pairs_or_hint(data: Path | None) -> Any:
    """``find_pairs(data)``; a folder of plain photos gets a pointer to --degrade."""
    from deblurcli.data.pairs import find_pairs

    if data is None:
        raise UsageError(
            "give {data} DIR, or {sharp} DIR and {blurred} DIR",
            mentions=("data", "sharp", "blurred"),
        )
    try:
        return find_pairs(data)
    except UsageError as exc:
        if data.is_dir() and find_images(data, recursive=False):
            raise exc.extended(
                after="; to train on sharp-only images, blur them on the fly with "
                "{degrade} motion|gaussian|mix",
                mentions=("degrade",),
            ) from None
        raise


def degrade_sources(folder: Path) -> list[ds.Example]:
    """Sharp images for --degrade; a paired folder contributes its sharp half only."""
    from deblurcli.data.pairs import find_pairs

    folder = Path(folder)
    if (folder / "sharp").is_dir():  # a `deblur blur` folder
        examples = ds.sharp_only_examples(folder / "sharp")
    else:
        try:  # GoPro-style sequences with blur/ and sharp/ side by side
            examples = [ds.Example(p.name, p.sharp) for p in find_pairs(folder).pairs]
        except UsageError:  # plain photos: every image is a sharp source
            return ds.sharp_only_examples(folder)
    log.warning(
        Note(
            "%s holds sharp/blurred pairs: {degrade} uses its %d sharp images only",
            mentions=("degrade",),
        ),
        folder,
        len(examples),
    )
    return examples


def _worker_init(parent_pid: int, _: int) -> None:
    import cv2

    die_with_parent(parent_pid)  # a kill -9 of the trainer must not leave workers behind
    cv2.setNumThreads(1)  # workers already run in parallel; nested threads only contend
