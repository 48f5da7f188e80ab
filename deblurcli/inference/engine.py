"""``restore_tensor``: run a model over images of any size, tiled, on any device."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from deblurcli.errors import DeviceMemoryError, Note, UsageError
from deblurcli.inference.device import autocast, channels_last, pick_device, resolve_precision
from deblurcli.inference.narrow_conv import narrow_convs, split_narrow_convs
from deblurcli.inference.norm_stats import InstanceNormStats, StopForward
from deblurcli.inference.tiling import (
    MIN_TILE,
    Tile,
    auto_tile,
    batched,
    default_overlap,
    extract,
    memory_budget,
    pad_bottom_right,
    padded_size,
    plan_tiles,
    size_multiple,
    tiled_forward,
)

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (tiles done, tiles total)


def _is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom_type) or "out of memory" in str(exc).lower()


class _Runner:
    """Runs batches on the device; half precision with an fp32 fallback."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None):
        self.model, self.device, self.dtype = model, device, dtype
        self.channels_last = channels_last(device, dtype)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        bf16_cpu = device.type == "cpu" and dtype == torch.bfloat16
        self.narrow = narrow_convs(model) if bf16_cpu else []

    @property
    def element_bytes(self) -> int:
        """What one activation value takes while the model runs: autocast halves it."""
        return 4 if self.dtype is None else torch.finfo(self.dtype).bits // 8

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is not None:
            try:
                with autocast(self.device, self.dtype), split_narrow_convs(self.narrow):
                    y = self.model(x).float()
                if torch.isfinite(y).all():
                    return y
                log.warning("non-finite output in %s; redoing in fp32", self.dtype)
            except RuntimeError as exc:
                if _is_oom(exc) or "not implemented for" not in str(exc):
                    raise
                log.warning("%s is not supported here (%s); using fp32", self.dtype, exc)
            self.dtype = None  # stay in fp32 for the rest of this image set
        return self.model(x).float()


def parse_tile(value: int | str) -> int | str:
    """``auto``, ``0`` (whole image) or a positive tile side."""
    if isinstance(value, str):
        value = value.strip().lower()
        if value == "auto":
            return value
        if not value.isdigit():
            raise UsageError(f"must be a number, 0 or 'auto', not {value!r}", option="tile")
        value = int(value)
    if value < 0:
        raise UsageError("must be >= 0", option="tile")
    return value


def min_tile(model: nn.Module) -> int:
    """The smallest ``--tile`` worth running: twice the size multiple, and at least 64."""
    return max(MIN_TILE, 2 * size_multiple(model))


def _check_overlap(tile_overlap: int | None) -> None:
    if tile_overlap is not None and tile_overlap < 0:
        raise UsageError(f"must be >= 0, not {tile_overlap}", option="tile_overlap")


def check_tiling(model: nn.Module, tile: int | str, tile_overlap: int | None) -> Note | None:
    """Refuse a tile below :func:`min_tile` or a negative overlap (:class:`UsageError`);
    returns a warning when the overlap is half the tile or more (most work is redone)."""
    _check_overlap(tile_overlap)
    side = parse_tile(tile)
    if side == "auto" or side == 0:
        return None
    smallest = min_tile(model)
    if side < smallest:
        raise UsageError(
            f"{side} is too small for this model; use {smallest} or more", option="tile"
        )
    overlap = default_overlap(model) if tile_overlap is None else tile_overlap
    if overlap and 2 * overlap >= side:
        multiple = size_multiple(model)
        suggested = -(-max(4 * overlap, smallest) // multiple) * multiple
        return Note(
            f"{{tile_overlap}} {overlap} is half of {{tile}} {side} or more, so most of each "
            f"tile is computed twice; use {{tile}} {suggested} or more (or a smaller "
            "{tile_overlap})",
            mentions=("tile", "tile_overlap"),
        )
    return None


@torch.inference_mode()
def restore_tensor(
    model: nn.Module,
    image: torch.Tensor,
    *,
    tile: int | str = "auto",
    tile_overlap: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    batch_size: int = 1,
    norm_stats: bool = True,
    memory_budget: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Restore ``image`` (N×C×H×W or C×H×W, [0, 1], CPU) with ``model``; same shape, on CPU.

    ``tile``: a side in pixels, ``0`` for the whole image, or ``auto`` (largest tile whose
    activations fit ``memory_budget`` bytes, by default from the device's free memory). On an
    out-of-memory error (CUDA's, typically) the tile is halved and the image redone.
    ``norm_stats`` makes InstanceNorm layers use whole-image statistics when tiling (see
    :mod:`.norm_stats`).
    The model is moved to ``device`` and put in eval mode.
    """
    dev = device if isinstance(device, torch.device) else pick_device(device or "auto")
    model.eval().to(dev)
    runner = _Runner(model, dev, resolve_precision(precision, dev, model))
    single = image.dim() == 3
    batch = image[None] if single else image
    gray = batch.shape[1] == 1
    if gray:
        batch = batch.expand(-1, 3, -1, -1)
    multiple = size_multiple(model)
    _check_overlap(tile_overlap)
    overlap = default_overlap(model) if tile_overlap is None else int(tile_overlap)
    overlap = -(-max(overlap, 0) // multiple) * multiple
    side = parse_tile(tile)
    if side == "auto":
        side = auto_tile(
            model, dev, multiple, overlap, batch_size, memory_budget, runner.element_bytes
        )
    elif side > 0:  # tile starts must stay on the model's stride grid
        side = max(side // multiple * multiple, 2 * multiple)
    result = _whole_batches(runner, batch.float(), side, multiple, batch_size)
    if result is None:
        outputs = []
        tiling = _Tiling(overlap, multiple, batch_size, norm_stats, progress)
        for img in batch.float():
            out, side = _restore_with_retry(runner, img, side, tiling)
            outputs.append(out)
        # One image (the common, and the big, case): no stacked copy.
        result = outputs[0][None] if len(outputs) == 1 else torch.stack(outputs)
    result.clamp_(0, 1)
    if gray:
        result = result.mean(dim=1, keepdim=True)
    return result[0] if single else result


def _whole_batches(
    runner: _Runner, batch: torch.Tensor, side: int, multiple: int, batch_size: int
) -> torch.Tensor | None:
    """Several images that each fit whole run ``batch_size`` at a time (exact: every layer,
    InstanceNorm included, is per sample). None when tiling is needed or memory runs out."""
    h, w = batch.shape[-2:]
    hp, wp = padded_size(h, multiple), padded_size(w, multiple)
    if batch.shape[0] < 2 or batch_size < 2 or (0 < side < max(hp, wp)):
        return None
    try:
        outs = [
            runner(pad_bottom_right(chunk, hp, wp))[..., :h, :w].float().cpu()
            for chunk in batch.split(batch_size)
        ]
    except RuntimeError as exc:
        if not _is_oom(exc):
            raise
        if runner.device.type == "cuda":
            torch.cuda.empty_cache()
        return None  # one image at a time, with the tile-halving retry
    return torch.cat(outs)


@dataclass(frozen=True)
class _Tiling:
    """How one image is cut and run, apart from the tile side (which retries may halve)."""

    overlap: int
    multiple: int
    batch_size: int
    norm_stats: bool
    progress: Progress | None


def _restore_with_retry(
    runner: _Runner, img: torch.Tensor, side: int, tiling: _Tiling
) -> tuple[torch.Tensor, int]:
    """Restore one C×H×W image, halving the tile on CUDA out-of-memory errors."""
    overlap, multiple = tiling.overlap, tiling.multiple
    floor = -(-max(MIN_TILE // 2, overlap + multiple) // multiple) * multiple
    while True:
        try:
            out = _restore_one(runner, img, side, tiling)
            return out, side
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
            current = side if side > 0 else max(img.shape[-2:])
            smaller = current // 2 // multiple * multiple
            if smaller < floor:
                raise DeviceMemoryError(
                    f"out of memory on {runner.device} even with tile {current}; "
                    "try {device} cpu or a smaller {batch_size}",
                    mentions=("device", "batch_size"),
                ) from None
            log.warning("out of memory with tile %d; retrying with tile %d", current, smaller)
            side = smaller


def _restore_one(runner: _Runner, img: torch.Tensor, side: int, tiling: _Tiling) -> torch.Tensor:
    overlap, multiple, batch_size = tiling.overlap, tiling.multiple, tiling.batch_size
    progress = tiling.progress
    h, w = img.shape[-2:]
    # Overlap at most half the tile, so a small --tile never means one tile per stride.
    tiles = plan_tiles(h, w, side, min(overlap, side // 2 // multiple * multiple), multiple)
    if len(tiles) == 1:
        padded = extract(img, tiles[0])[None]
        out = runner(padded)[0, :, :h, :w].float().cpu()
        if progress:
            progress(1, 1)
        return out
    stats = InstanceNormStats(runner.model) if tiling.norm_stats else None
    n_passes = (len(stats.states) if stats else 0) + 1
    done, total = 0, len(tiles) * n_passes

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    def run(batch: torch.Tensor, group: list[Tile]) -> torch.Tensor:
        if stats:
            _set_cores(stats, group)
        return runner(batch)

    if not stats:
        return tiled_forward(run, img, tiles, multiple, batch_size, tick)
    with stats.installed():
        groups = list(batched(tiles, batch_size))
        _resolve_stats(runner, img, groups, stats, run, tick)
        if runner.dtype is not None and not stats.finite():
            # Half overflowed in front of a norm layer: NaN statistics would make even the
            # fp32 fallback of the output pass black, so redo them in fp32.
            log.warning("non-finite statistics in %s; redoing them in fp32", runner.dtype)
            runner.dtype = None
            stats.clear()
            _resolve_stats(runner, img, groups, stats, run, tick)
        stats.start_pass(collect=False)
        return tiled_forward(run, img, tiles, multiple, batch_size, tick)


class _Captured(Exception):
    """Raised by a pre-hook once the trunk's input is in hand."""


def _resolve_stats(
    runner: _Runner,
    img: torch.Tensor,
    groups: list[list[Tile]],
    stats: InstanceNormStats,
    run: Callable[[torch.Tensor, list[Tile]], torch.Tensor],
    tick: Callable[[int], None],
) -> None:
    """Fix every InstanceNorm layer's whole-image statistics, one collecting pass per layer.

    When all the layers sit in one ``nn.Sequential`` trunk (deblurgan, transformnet), each
    tile's activation at the trunk child in front of the layer being resolved is kept (on the
    CPU, within half the memory budget), so a pass resumes there instead of recomputing
    everything in front of it; otherwise every pass starts from the pixels.
    """
    trunk = stats.trunk(runner.model)
    budget = memory_budget(runner.device) // 2
    cache: list[torch.Tensor | None] | None = None
    cache_at = 0
    while stats.pending():
        stats.start_pass(collect=True)
        target = stats.next_child(trunk) if trunk is not None else 0
        fresh: list[torch.Tensor | None] | None = [] if trunk is not None else None
        kept = 0
        for gi, group in enumerate(groups):
            batch = None if cache is not None else torch.stack([extract(img, t) for t in group])
            if trunk is None:
                with contextlib.suppress(StopForward):
                    run(batch, group)  # type: ignore[arg-type]
                tick(len(group))
                continue
            if cache is not None:
                x, start = cache[gi], cache_at
                cache[gi] = None  # free as we go
                _set_cores(stats, group)
            else:
                x, start = _trunk_input(runner, trunk, batch, group, run), 0
            stored = _run_trunk(runner, trunk, x, start, target, stats)
            if fresh is not None and stored is not None:
                kept += stored.numel() * stored.element_size()
                fresh.append(stored)
                if kept * len(groups) > budget * (gi + 1):
                    fresh = None  # would not fit: later passes start from the pixels
            tick(len(group))
        cache, cache_at = fresh, target
        if cache is None:
            trunk = None
        if not stats.finish_pass():
            break


def _set_cores(stats: InstanceNormStats, group: list[Tile]) -> None:
    cores = [
        (
            t.ys.core_start - t.ys.start,
            t.ys.core_end - t.ys.start,
            t.xs.core_start - t.xs.start,
            t.xs.core_end - t.xs.start,
        )
        for t in group
    ]
    tile = group[0]
    stats.set_tiles(cores, (tile.ys.end - tile.ys.start, tile.xs.end - tile.xs.start))


def _trunk_input(
    runner: _Runner,
    trunk: nn.Sequential,
    batch: torch.Tensor,
    group: list[Tile],
    run: Callable[[torch.Tensor, list[Tile]], torch.Tensor],
) -> torch.Tensor:
    """Run the model on ``batch`` just far enough to see what its trunk receives."""
    seen: list[torch.Tensor] = []

    def grab(_m: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        raise _Captured

    handle = trunk.register_forward_pre_hook(grab)
    try:
        run(batch, group)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0]


def _run_trunk(
    runner: _Runner,
    trunk: nn.Sequential,
    x: torch.Tensor,
    start: int,
    target: int,
    stats: InstanceNormStats,
) -> torch.Tensor | None:
    """Run trunk children from ``start`` until the layer being resolved has been seen.

    Returns the (CPU) input of child ``target``, which the next pass resumes from.
    """
    x = x.to(runner.device)
    stored = None
    with autocast(runner.device, runner.dtype):
        try:
            for idx, child in enumerate(list(trunk)[start:], start=start):
                if idx == target:
                    stored = x.cpu()
                x = child(x)
        except StopForward:
            pass
    return stored
