"""Whole-image statistics for InstanceNorm layers during tiled inference.

InstanceNorm normalises every feature map with its own per-channel mean and variance. Cut an
image into tiles and each tile normalises with *its* statistics, so tiles disagree with each
other and with the whole-image result (visible as blocks of different brightness/contrast in
deblurgan and transformnet outputs).

Global-statistics mode reproduces the whole-image statistics without ever holding the whole
image's features. The InstanceNorm layers are resolved one at a time, in execution order: a
collecting pass runs every tile through the layers whose statistics are already fixed, sums
the next layer's input (per channel, sum and sum of squares, in float64) over the tile's
*core* (the cores partition the padded image, so every feature pixel counts exactly once),
stops the forward there, and fixes that layer's mean and variance. After one pass per layer
the output pass normalises every tile with whole-image statistics, so tiles agree with the
whole image up to the tile-border effects the overlap already hides. Each collecting pass
stops early; when all the layers sit in one ``nn.Sequential`` trunk (deblurgan, transformnet)
each tile's activation in front of the layer being resolved is cached, so a pass resumes
there and the collecting passes together cost one to two ordinary passes (without the cache,
about layers / 2 passes). Nothing is paid when an image runs whole. A cheaper low-resolution
statistics pass was measured and rejected: it is 8–46/255 off (``docs/restore.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

Core = tuple[int, int, int, int]  # y0, y1, x0, x1 in tile-local input pixels


class StopForward(Exception):
    """Raised inside the model once the layer being resolved has seen its input."""


class _NormState:
    """Replacement forward for one InstanceNorm2d that can collect and use fixed stats."""

    def __init__(self, module: nn.InstanceNorm2d, owner: InstanceNormStats):
        self.module = module
        self.owner = owner
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(self.module.num_features, dtype=torch.float64)
        self.total_sq = torch.zeros(self.module.num_features, dtype=torch.float64)
        self.count = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        xf = x.float()
        if self.fixed is None and self.owner.collecting:
            self._collect(xf)
            raise StopForward
        if self.fixed is None:
            var, mean = torch.var_mean(xf, dim=(2, 3), correction=0, keepdim=True)
        else:
            mean = self.fixed[0].to(xf.device)[None, :, None, None]
            var = self.fixed[1].to(xf.device)[None, :, None, None]
        y = (xf - mean) * torch.rsqrt(var + m.eps)
        if m.affine:
            y = y * m.weight[None, :, None, None] + m.bias[None, :, None, None]
        return y.to(x.dtype)

    def _collect(self, x: torch.Tensor) -> None:
        th, tw = self.owner.tile_hw
        h, w = x.shape[-2:]
        for sample, (y0, y1, x0, x1) in zip(x, self.owner.cores, strict=True):
            region = sample[:, y0 * h // th : y1 * h // th, x0 * w // tw : x1 * w // tw]
            region = region.double()
            self.total += region.sum(dim=(1, 2)).cpu()
            self.total_sq += (region * region).sum(dim=(1, 2)).cpu()
            self.count += region.shape[1] * region.shape[2]

    def finish(self) -> bool:
        """Fix the statistics collected in this pass (False if this layer saw nothing)."""
        if self.count == 0:
            return False
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0)
        self.fixed = (mean.float(), var.float())
        self.reset()
        return True


class InstanceNormStats:
    """Collect and apply whole-image InstanceNorm statistics across tiled passes."""

    def __init__(self, model: nn.Module):
        self.states = [
            _NormState(m, self)
            for m in model.modules()
            if isinstance(m, nn.InstanceNorm2d) and not m.track_running_stats
        ]
        self.collecting = False
        self.cores: list[Core] = []
        self.tile_hw = (1, 1)

    def __bool__(self) -> bool:
        return bool(self.states)

    @contextlib.contextmanager
    def installed(self) -> Iterator[InstanceNormStats]:
        """Route every InstanceNorm2d of the model through this object while inside."""
        for s in self.states:
            s.module.forward = s  # type: ignore[method-assign]
        try:
            yield self
        finally:
            for s in self.states:
                del s.module.forward

    def set_tiles(self, cores: list[Core], tile_hw: tuple[int, int]) -> None:
        """Tell the layers which part of each sample in the next batch they own."""
        self.cores, self.tile_hw = cores, tile_hw

    def start_pass(self, collect: bool) -> None:
        """Begin a collecting pass (resolves the next layer) or the output pass."""
        self.collecting = collect
        for s in self.states:
            s.reset()

    def finish_pass(self) -> bool:
        """Fix the layer resolved by this pass; False once every reachable layer is fixed."""
        self.collecting = False
        return any([s.finish() for s in self.states])

    def pending(self) -> bool:
        return any(s.fixed is None for s in self.states)

    def trunk(self, model: nn.Module) -> nn.Sequential | None:
        """The outermost plain ``nn.Sequential`` holding every InstanceNorm layer, if any."""
        targets = {id(s.module) for s in self.states}
        for m in model.modules():
            if type(m) is nn.Sequential and targets <= {id(x) for x in m.modules()}:
                return m
        return None

    def next_child(self, trunk: nn.Sequential) -> int:
        """Index of the trunk child holding the first layer still to resolve."""
        children = list(trunk)
        pending = {id(s.module) for s in self.states if s.fixed is None}
        for i, child in enumerate(children):
            if pending & {id(x) for x in child.modules()}:
                return i
        return len(children)

    def finite(self) -> bool:
        """Whether every fixed mean and variance is finite (half precision can overflow)."""
        return all(bool(torch.isfinite(torch.cat(s.fixed)).all()) for s in self.states if s.fixed)

    def clear(self) -> None:
        for s in self.states:
            s.fixed = None
            s.reset()
