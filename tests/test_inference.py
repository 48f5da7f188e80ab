"""The tiling engine: tiled vs whole agreement, seams, planning, devices, precision, OOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, transform
from torch import nn

from deblurcli.archs import create, get_spec, list_archs
from deblurcli.errors import UsageError
from deblurcli.inference import engine, pick_device, resolve_precision, restore_tensor
from deblurcli.inference.engine import _Runner
from deblurcli.inference.tiling import (
    Span,
    auto_tile,
    plan_spans,
    plan_tiles,
    ramp,
    tiled_forward,
)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A real photograph (scikit-image's astronaut), downscaled: 3×176×208 in [0, 1]."""
    img = transform.resize(data.astronaut(), (176, 208), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create(name, **get_spec(name).tiny_config).eval()


@pytest.mark.parametrize("name", list_archs())
def test_tiled_matches_whole_image(name, photo):
    model = _tiny(name)
    whole = restore_tensor(model, photo, tile=0)
    assert (whole - photo).abs().mean() > 2 / 255  # the network really changes the image
    assert len(plan_tiles(176, 208, 160, min(get_spec(name).tile_overlap, 128), 4)) > 1
    tiled = restore_tensor(model, photo, tile=160)
    assert tiled.shape == photo.shape
    assert float((tiled - whole).abs().mean()) < 1 / 255


def test_instance_norm_needs_global_statistics(photo):
    """Without whole-image statistics InstanceNorm tiles visibly disagree (why the mode exists)."""
    model = _tiny("transformnet")
    whole = restore_tensor(model, photo, tile=0)
    local = restore_tensor(model, photo, tile=128, norm_stats=False)
    assert float((local - whole).abs().mean()) > 3 / 255


class _TileMean(nn.Module):
    """Outputs each input's per-channel mean everywhere: a different constant per tile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()


def test_blending_leaves_no_seam(photo):
    tiles = plan_tiles(176, 208, 96, 32, 1)
    model = _TileMean()
    blended = tiled_forward(lambda b, _g: model(b), photo, tiles, 1)
    hard = torch.zeros_like(photo)  # each tile's core pasted with no blending
    for t in tiles:
        value = photo[:, t.ys.start : t.ys.end, t.xs.start : t.xs.end].mean(dim=(1, 2))
        hard[:, t.ys.core_start : t.ys.core_end, t.xs.core_start : t.xs.core_end] = value[
            :, None, None
        ]
    jump = max(hard.diff(dim=1).abs().max(), hard.diff(dim=2).abs().max())
    step = max(blended.diff(dim=1).abs().max(), blended.diff(dim=2).abs().max())
    assert jump > 0.02  # the tiles really disagree ...
    assert step < 0.1 * jump  # ... and the blend turns the step into a gentle ramp


def test_constant_output_is_reproduced_exactly(photo):
    tiles = plan_tiles(176, 208, 64, 24, 4)
    out = tiled_forward(lambda b, _g: torch.full_like(b, 0.25), photo, tiles, 4, batch_size=3)
    torch.testing.assert_close(out, torch.full_like(photo, 0.25))


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "multiple"), [(200, 64, 16, 4), (96, 32, 8, 8)]
)
def test_spans_cover_and_cores_partition(length, tile, overlap, multiple):
    spans = plan_spans(length, tile, overlap, multiple)
    assert spans[0].start == 0 and spans[-1].end == length
    sizes = {s.end - s.start for s in spans}
    assert len(sizes) == 1 and sizes.pop() <= tile  # one size (batchable), shrunk to even out
    assert all(s.start % multiple == 0 for s in spans)
    assert all(b.start <= a.end - overlap for a, b in zip(spans, spans[1:], strict=False))
    cores = [(s.core_start, s.core_end) for s in spans]
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(cores, cores[1:], strict=False))
    assert all(s.start <= s.core_start < s.core_end <= s.end for s in spans)


def test_ramp_is_smooth_and_positive():
    w = ramp(Span(0, 64, 0, 64, 16, 16))
    assert w.min() > 0 and w.max() == 1 and (w.diff().abs() < 0.11).all()


def test_auto_tile_follows_the_memory_budget(photo):
    model = _tiny("simplecnn")
    cpu = torch.device("cpu")
    small = auto_tile(model, cpu, 1, 16, budget=8 << 20)
    large = auto_tile(model, cpu, 1, 16, budget=512 << 20)
    assert 64 <= small < large
    whole = restore_tensor(model, photo, tile=0)
    auto = restore_tensor(model, photo, tile="auto", memory_budget=2 << 20)
    assert float((auto - whole).abs().mean()) < 1 / 255


def test_auto_tile_counts_half_precision_activations_at_their_size(photo):
    model = _tiny("simplecnn")
    cpu = torch.device("cpu")
    fp32 = auto_tile(model, cpu, 1, 16, budget=8 << 20)
    half = auto_tile(model, cpu, 1, 16, budget=8 << 20, element_bytes=2)
    assert abs(half / fp32 - 2**0.5) < 0.05  # half the bytes a pixel: twice the pixels
    # restore_tensor sizes --tile auto for the precision it runs: bf16 needs fewer tiles.
    totals = {}
    for precision in ("fp32", "bf16"):
        seen: list[int] = []
        restore_tensor(
            model,
            photo,
            tile="auto",
            precision=precision,
            memory_budget=1 << 20,
            progress=lambda _done, total, seen=seen: seen.append(total),
        )
        totals[precision] = seen[-1]
    assert totals["fp32"] > totals["bf16"] >= 1, totals


class _OomAbove(nn.Module):
    """Raises the CUDA out-of-memory error for inputs larger than ``limit`` pixels a side."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.sides: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sides.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 0.5


def test_out_of_memory_halves_the_tile(photo):
    model = _OomAbove(100)
    out = restore_tensor(model, photo, tile=0, tile_overlap=8, device="cpu")
    torch.testing.assert_close(out, photo * 0.5)
    # Whole image fails, then one retry with tile 104 (evened out to 92) succeeds.
    assert model.sides[0] == 208 and len(set(model.sides[1:])) == 1 and model.sides[1] <= 104


def test_out_of_memory_at_the_smallest_tile_is_a_user_error(photo):
    from deblurcli.errors import DeblurError

    with pytest.raises(DeblurError, match="out of memory"):
        restore_tensor(_OomAbove(8), photo, tile=64, tile_overlap=8, device="cpu")


def test_batched_tiles_and_grayscale(photo):
    model = _tiny("skipae")
    gray = photo.mean(dim=0, keepdim=True)[None]  # 1×1×H×W
    one = restore_tensor(model, gray, tile=96, batch_size=1)
    many = restore_tensor(model, gray, tile=96, batch_size=4)
    assert one.shape == gray.shape
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected is None:
        assert pick_device("auto").type in {"cpu", "mps"}
        with pytest.raises(UsageError, match="CUDA is not available"):
            pick_device("cuda:0")
    with pytest.raises(UsageError):
        pick_device("tpu")


def test_precision_policy():
    model = _tiny("simplecnn")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, model) is None  # never half on the CPU unless asked
    assert resolve_precision("bf16", cpu, model) is torch.bfloat16
    with pytest.raises(UsageError):
        resolve_precision("fp8", cpu, model)


class _Overflows(nn.Module):
    """A 1×1 conv scaling by 1e5 then back: fine in fp32, inf (→ NaN) in fp16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None] * 1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return (y - y.detach() * 0.5) / 5e4


def test_non_finite_half_output_falls_back_to_fp32(photo):
    # fp16 is refused on the CPU (emulated, ~200x slower), so drive the runner directly.
    runner = _Runner(_Overflows(), torch.device("cpu"), torch.float16)
    out = runner(photo[None])[0]
    assert runner.dtype is None and torch.isfinite(out).all()
    torch.testing.assert_close(out, photo, atol=1e-4, rtol=0)


def test_several_whole_images_batched_match_one_by_one(photo):
    model = _tiny("transformnet")  # InstanceNorm: batching must stay per sample
    images = torch.stack([photo[:, :96, :112], photo[:, 80:, 96:][:, :96, :112]])
    together = restore_tensor(model, images, tile=0, batch_size=2)
    alone = torch.stack([restore_tensor(model, im, tile=0) for im in images])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list_archs())
def test_tiny_and_odd_images(name):
    """1×1 to odd-sized inputs: padded up (even past InstanceNorm's 1×1 limit), cropped back."""
    model = _tiny(name)
    for shape in [(3, 1, 1), (3, 5, 70), (1, 3, 33, 40)]:
        x = torch.rand(*shape)
        for tile in (0, 8, "auto"):
            y = restore_tensor(model, x, tile=tile)
            assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["deblurgan", "transformnet"])
def test_resumed_statistics_passes_are_exact(name, photo, monkeypatch):
    """Resuming collecting passes from cached trunk activations changes nothing, and neither
    does running out of cache budget (falls back to passes from the pixels)."""
    from deblurcli.inference.norm_stats import InstanceNormStats

    model = _tiny(name)
    assert InstanceNormStats(model).trunk(model) is not None
    resumed = restore_tensor(model, photo, tile=128)
    monkeypatch.setattr(engine, "memory_budget", lambda _device: 1024)
    no_cache = restore_tensor(model, photo, tile=128)
    monkeypatch.setattr(InstanceNormStats, "trunk", lambda self, m: None)
    from_pixels = restore_tensor(model, photo, tile=128)
    torch.testing.assert_close(resumed, from_pixels, atol=1e-6, rtol=0)
    torch.testing.assert_close(no_cache, from_pixels, atol=1e-6, rtol=0)


class _NormOverflows(nn.Module):
    """A conv whose fp16 output overflows right in front of an InstanceNorm layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        nn.init.dirac_(self.conv.weight)
        self.conv.weight.data *= 1e5  # > 65504: inf in fp16
        self.trunk = nn.Sequential(self.conv, nn.InstanceNorm2d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.05 * self.trunk(x).float()


def test_non_finite_half_statistics_fall_back_to_fp32(photo, monkeypatch):
    model = _NormOverflows()
    whole = restore_tensor(model, photo, tile=0, precision="fp32", device="cpu")
    # fp16 is refused on the CPU (emulated, ~200x slower); force it as a GPU would pick it.
    monkeypatch.setattr(engine, "resolve_precision", lambda *_: torch.float16)
    tiled = restore_tensor(model, photo, tile=96, precision="fp16", device="cpu")
    assert torch.isfinite(tiled).all()
    assert float((tiled - whole).abs().mean()) < 1 / 255
