"""The tiling engine: overlapping tiles, smooth blending, memory-based tile size.

An image (C×H×W on the CPU) is conceptually reflect-padded to the model's size multiple and
cut into ``tile``×``tile`` windows whose starts are multiples of that size multiple (so strided
feature grids line up between tiles). Each tile is weighted by a separable raised-cosine ramp
over the part it shares with its neighbours (flat elsewhere, including the image borders),
accumulated, and divided by the summed weights, so overlaps fade smoothly and no seam shows.

Each tile also owns a *core*: a partition of the image into non-overlapping rectangles
(cut in the middle of every overlap) used to collect whole-image normalisation statistics
(:mod:`deblurcli.inference.norm_stats`).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MIN_TILE = 64
_CPU_BUDGET_CAP = 768 << 20  # CPU activations: at most 768 MiB, or a quarter of free RAM


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in padded coordinates."""

    start: int
    end: int
    core_start: int
    core_end: int
    ramp_lo: int  # blend ramp length shared with the previous tile (0 at the image border)
    ramp_hi: int  # ... with the next tile


@dataclass(frozen=True)
class Tile:
    ys: Span
    xs: Span


def _align_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[Span]:
    """Tiles covering ``[0, length)`` (``length`` already a multiple of ``multiple``)."""
    if tile <= 0 or tile >= length:
        return [Span(0, length, 0, length, 0, 0)]
    if tile - overlap < multiple:
        raise ValueError(f"tile {tile} must exceed overlap {overlap} by at least {multiple}")
    # As few tiles as fit, then shrunk to share the length evenly: a last tile flush with the
    # border would otherwise overlap its neighbour by far more than ``overlap`` (wasted work).
    count = -(-(length - overlap) // (tile - overlap))
    tile = min(tile, _align_up(-(-(length + (count - 1) * overlap) // count), multiple))
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    spans = []
    for i, start in enumerate(starts):
        end = start + tile
        lo = starts[i - 1] + tile - start if i > 0 else 0
        hi = end - starts[i + 1] if i + 1 < len(starts) else 0
        core_lo = _cut(starts[i - 1] + tile, start, multiple) if i > 0 else 0
        core_hi = _cut(end, starts[i + 1], multiple) if i + 1 < len(starts) else length
        spans.append(Span(start, end, core_lo, core_hi, max(lo, 0), max(hi, 0)))
    return spans


def _cut(prev_end: int, next_start: int, multiple: int) -> int:
    """Where the core boundary between two overlapping tiles goes: mid-overlap, aligned."""
    mid = (prev_end + next_start) // 2 // multiple * multiple
    return min(max(mid, next_start), prev_end)


def padded_size(length: int, multiple: int) -> int:
    """``length`` padded to the size multiple, and to at least two strides: tiny images
    would otherwise reach InstanceNorm layers as 1×1 maps, which torch rejects."""
    return max(_align_up(length, multiple), 2 * multiple)


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int) -> list[Tile]:
    """The tile grid for an image of ``height``×``width`` (unpadded)."""
    hp, wp = padded_size(height, multiple), padded_size(width, multiple)
    ys = plan_spans(hp, tile, overlap, multiple)
    xs = plan_spans(wp, tile, overlap, multiple)
    return [Tile(y, x) for y in ys for x in xs]


def ramp(span: Span) -> torch.Tensor:
    """1-D blend weights of ``span``: raised-cosine ramps over the shared parts, else 1."""
    w = torch.ones(span.end - span.start)
    for n, side in ((span.ramp_lo, "lo"), (span.ramp_hi, "hi")):
        if n <= 0:
            continue
        t = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        r = torch.sin(t * (math.pi / 2)) ** 2  # > 0 everywhere, smooth, rises to ~1
        if side == "lo":
            w[:n] = torch.minimum(w[:n], r)
        else:
            w[-n:] = torch.minimum(w[-n:], r.flip(0))
    return w


def extract(image: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The tile's pixels (C×h×w), reflect-padded where it runs past the bottom/right border."""
    h, w = image.shape[-2:]
    crop = image[..., tile.ys.start : min(tile.ys.end, h), tile.xs.start : min(tile.xs.end, w)]
    return pad_bottom_right(crop, tile.ys.end - tile.ys.start, tile.xs.end - tile.xs.start)


def pad_bottom_right(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``x`` (…×h×w) to ``height``×``width``: reflect, or replicate where reflect can't."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    batched = x if x.dim() == 4 else x[None]
    out = F.pad(batched, (0, pad_w, 0, pad_h), mode=mode)
    return out if x.dim() == 4 else out[0]


def batched(items: list[Tile], size: int) -> Iterator[list[Tile]]:
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]


def tiled_forward(
    run: Callable[[torch.Tensor, list[Tile]], torch.Tensor],
    image: torch.Tensor,
    tiles: list[Tile],
    multiple: int,
    batch_size: int = 1,
    on_tile: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Blend ``run`` (a batch of tiles → outputs of the same shape) over ``image`` (C×H×W)."""
    c, h, w = image.shape
    out = torch.zeros(c, h, w)
    wy, wx = torch.zeros(h), torch.zeros(w)
    seen_y: set[Span] = set()
    seen_x: set[Span] = set()
    for group in batched(tiles, batch_size):
        batch = torch.stack([extract(image, t) for t in group])
        result = run(batch, group).float().cpu()
        for t, res in zip(group, result, strict=True):
            ry, rx = ramp(t.ys), ramp(t.xs)
            y1, x1 = min(t.ys.end, h), min(t.xs.end, w)
            ny, nx = y1 - t.ys.start, x1 - t.xs.start
            weight = ry[:ny, None] * rx[None, :nx]
            out[:, t.ys.start : y1, t.xs.start : x1] += res[:, :ny, :nx] * weight
            # The grid is a product of spans, so the summed weight is separable.
            if t.ys not in seen_y:
                seen_y.add(t.ys)
                wy[t.ys.start : y1] += ry[:ny]
            if t.xs not in seen_x:
                seen_x.add(t.xs)
                wx[t.xs.start : x1] += rx[:nx]
        if on_tile is not None:
            on_tile(len(group))
    out /= wy[None, :, None]
    out /= wx[None, None, :]
    return out


def size_multiple(model: nn.Module) -> int:
    """The model's padding multiple: its own (a registered model's is its spec's
    ``multiple_for`` its config, as edgenet's depends on the config), else its spec's."""
    value = getattr(model, "size_multiple", None)
    if value is None:
        spec = getattr(model, "arch_spec", None)
        value = getattr(spec, "size_multiple", 1)
    return max(1, int(value))


def default_overlap(model: nn.Module) -> int:
    spec = getattr(model, "arch_spec", None)
    return int(getattr(spec, "tile_overlap", 32))


_BPP_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, float]] = weakref.WeakKeyDictionary()


def activation_bytes_per_pixel(model: nn.Module, device: torch.device, multiple: int) -> float:
    """Estimate activation memory per input pixel from one small probe forward.

    Sums the output sizes of every leaf module (in-place outputs counted once). That bounds
    what a forward pass can hold at once, so tiles sized from it stay within the budget.
    Cached per model and device (a batch of files probes once).
    """
    known = getattr(model, "bytes_per_pixel", None)  # an ONNX file records it at export
    if known:
        return float(known)
    cached = _BPP_CACHE.setdefault(model, {})
    if str(device) not in cached:
        cached[str(device)] = _probe_bytes_per_pixel(model, device, multiple)
    return cached[str(device)]


def _probe_bytes_per_pixel(model: nn.Module, device: torch.device, multiple: int) -> float:
    side = _align_up(max(64, 2 * multiple), multiple)
    total = 0

    def hook(_m: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if first is None or first.data_ptr() != output.data_ptr():
                total += output.numel() * 4  # fp32 upper bound
        elif isinstance(output, tuple | list):
            total += sum(o.numel() * 4 for o in output if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            model(torch.rand(1, 3, side, side, device=device))
    finally:
        for h in handles:
            h.remove()
    return total / (side * side)


def memory_budget(device: torch.device) -> int:
    """Bytes the activations of one batch of tiles may use on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)  # leave room for the allocator and cuDNN workspaces
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 4 * _CPU_BUDGET_CAP
    return int(min(_CPU_BUDGET_CAP, avail // 4))


def auto_tile(
    model: nn.Module,
    device: torch.device,
    multiple: int,
    overlap: int,
    batch_size: int = 1,
    budget: int | None = None,
    element_bytes: int = 4,
) -> int:
    """The largest square tile (a multiple of ``multiple``) whose activations fit ``budget``.

    ``element_bytes`` is the size of one activation value as the model runs: 4 in fp32, 2
    under bf16/fp16 autocast, whose activations take half the memory (so twice the pixels fit).
    """
    budget = memory_budget(device) if budget is None else budget
    per_pixel = activation_bytes_per_pixel(model, device, multiple) * max(1, batch_size)
    per_pixel *= element_bytes / 4  # the probe counts fp32 values
    side = int(math.sqrt(budget / max(per_pixel, 1.0)))
    side = side // multiple * multiple
    floor = _align_up(max(MIN_TILE, 2 * overlap + multiple), multiple)
    return max(side, floor)
