"""Checks that need a CUDA GPU (skipped without one): precision, tiling, memory, AMP training.

Run them on a GPU machine with ``python -m pytest -q tests/test_cuda.py -s``; ``-s`` shows
the measured figures (peak memory of ``--tile auto`` on 24 MP, restore MP/s at 1080p).
"""

from __future__ import annotations

import time

import pytest
import torch

from deblurcli.archs import list_archs
from deblurcli.imageio import ImageData, write_image
from deblurcli.inference import restore_tensor
from deblurcli.training.trainer import TrainConfig, Trainer
from deblurcli.weights import load_model
from deblurcli.weights.manifest import default_model_name, load_manifest
from tests.conftest import natural_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _photo_like(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth shapes plus texture: tiles see varied content, unlike uniform noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(
        torch.rand(1, 3, h // 16, w // 16, generator=g),
        size=(h, w),
        mode="bicubic",
        align_corners=False,
    )
    return (base + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def _default_model() -> torch.nn.Module:
    return load_model(default_model_name())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_tiled_matches_whole_on_cuda(precision: str) -> None:
    model = _default_model()
    image = _photo_like(512, 768)
    whole = restore_tensor(model, image, tile=0, device="cuda", precision=precision)
    tiled = restore_tensor(model, image, tile=256, device="cuda", precision=precision)
    assert torch.isfinite(tiled).all()
    assert (tiled - whole).abs().mean() <= 1 / 255
    assert (tiled - whole).abs().max() <= 8 / 255  # blended seams, not tiles that disagree


def test_auto_tile_on_24_megapixels_reports_peak_memory() -> None:
    model = _default_model()
    image = _photo_like(4000, 6000)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = restore_tensor(model, image, tile="auto", device="cuda")
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"\n24 MP --tile auto: {seconds:.1f} s, peak GPU memory {peak:.2f} GiB")
    assert out.shape == image.shape and torch.isfinite(out).all()
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    assert peak < 0.9 * total


def test_out_of_memory_retry_under_a_memory_cap() -> None:
    """A tile too large for a capped GPU is halved and the image still restored."""
    model = _default_model()
    image = _photo_like(2048, 2048)
    reference = restore_tensor(model, image, tile=512, device="cuda", precision="fp32")
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    # Room for the model and a few hundred MB of activations, far less than a whole 4 MP pass.
    cap = (torch.cuda.memory_allocated() + 1.5 * 2**30) / total
    torch.cuda.set_per_process_memory_fraction(cap, 0)
    try:
        out = restore_tensor(
            model, image, tile=0, device="cuda", precision="fp32", memory_budget=2**40
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert (out - reference).abs().mean() <= 1 / 255


@pytest.mark.parametrize("arch", list_archs())
def test_amp_training_steps(arch: str, tmp_path) -> None:
    """A few bf16-autocast steps of each arch (tiny config) on CUDA stay finite and learn."""
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(3):
        write_image(data / f"p{i}.png", ImageData(natural_image(160, 160, seed=i)))
    cfg = TrainConfig(
        arch=arch,
        out=tmp_path / "run",
        data=data,
        degrade="gaussian",
        patch_size=64,
        batch_size=4,
        steps=6,
        width="tiny",
        device="cuda",
        precision="auto",
        adversarial=False,
        val_every=6,
        ckpt_every=6,
    )
    trainer = Trainer(cfg)
    assert trainer.prec.dtype in (torch.bfloat16, torch.float16)
    result = trainer.run()
    assert result.step == 6 and result.last_loss == result.last_loss  # not NaN
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_restore_speed_at_1080p() -> None:
    model = _default_model()
    image = _photo_like(1080, 1920)
    restore_tensor(model, image[..., :256, :256], device="cuda")  # warm-up, cudnn autotune
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        restore_tensor(model, image, device="cuda")
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    mp_per_s = 1920 * 1080 / 1e6 / sorted(times)[1]
    name = default_model_name()
    print(f"\n{name} restore on {torch.cuda.get_device_name()}: {mp_per_s:.1f} MP/s at 1080p")
    assert mp_per_s > 0.5


def test_every_shipped_model_runs_on_cuda() -> None:
    for entry in load_manifest().entries:
        model = load_model(entry.name)
        out = restore_tensor(model, _photo_like(128, 160), device="cuda")
        assert torch.isfinite(out).all(), entry.name
