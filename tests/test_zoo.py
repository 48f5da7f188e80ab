"""Published checkpoints through spandrel: real files built with spandrel's own arch classes.

No downloads: NAFNet and FFTformer (both published for GoPro motion deblurring) are built at
random initialisation, saved the way their authors ship them, and run through ``deblur
restore``/``deblur eval``; the results are checked against a direct forward pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from deblurcli.cli import app
from deblurcli.imageio import ImageData, read_image, write_image
from deblurcli.weights import load_model

spandrel = pytest.importorskip("spandrel", reason="the zoo extra (spandrel) is not installed")
from spandrel.architectures.FFTformer import FFTformer  # noqa: E402
from spandrel.architectures.NAFNet import NAFNet  # noqa: E402

runner = CliRunner()
PHOTO = Path(__file__).resolve().parent.parent / "examples" / "blurry.png"
LEVEL = 1 / 255  # one 8-bit step: what writing a PNG may round to


def photo_crop(h: int, w: int) -> np.ndarray:
    """A crop of the bundled example photo (real camera content), H×W×3 in [0, 1]."""
    return read_image(PHOTO).pixels[100 : 100 + h, 150 : 150 + w, :3].copy()


def _nafnet() -> torch.nn.Module:
    torch.manual_seed(0)
    net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]).eval()
    with torch.no_grad():  # beta/gamma start at zero (blocks = identity): wake them up
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _fftformer() -> torch.nn.Module:
    torch.manual_seed(0)
    return FFTformer(dim=8, num_blocks=[1, 1, 1], num_refinement_blocks=1).eval()


@pytest.fixture(scope="module")
def nafnet_pth(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A NAFNet .pth laid out like the official release ({"params": state_dict})."""
    net = _nafnet()
    path = tmp_path_factory.mktemp("zoo") / "NAFNet-tiny.pth"
    torch.save({"params": net.state_dict()}, path)
    return net, path


@pytest.fixture(scope="module")
def fftformer_st(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    net = _fftformer()
    path = tmp_path_factory.mktemp("zoo") / "fftformer-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net, path


def _forward(net: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        return net(x)[0].clamp(0, 1).numpy().transpose(1, 2, 0)


def _restore(tmp_path: Path, model: Path, pixels: np.ndarray, *args: str) -> np.ndarray:
    src = write_image(tmp_path / "in.png", ImageData(pixels, bit_depth=16))
    out = tmp_path / "out.png"
    out.unlink(missing_ok=True)
    result = runner.invoke(
        app, ["restore", str(src), "--model", str(model), "-o", str(out), *args, "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return read_image(out).pixels


@pytest.mark.parametrize(
    ("fixture", "size", "tiling"),
    [
        ("nafnet_pth", (96, 144), ["--tile", "64", "--tile-overlap", "16"]),
        ("fftformer_st", (96, 128), ["--tile", "64", "--tile-overlap", "32"]),
    ],
)
def test_restore_matches_direct_forward(request, tmp_path, fixture, size, tiling):
    net, path = request.getfixturevalue(fixture)
    pixels = photo_crop(*size)
    pixels = np.rint(pixels * 65535) / 65535  # what the 16-bit input file holds
    expected = _forward(net, pixels.astype(np.float32))
    assert np.abs(expected - pixels).mean() > 0.05  # the network really changes the photo
    whole = _restore(tmp_path, path, pixels, "--tile", "0")
    assert np.abs(whole - expected).max() <= LEVEL
    # Tiles see less context than the whole image; blending keeps seams within a few levels.
    tiled = _restore(tmp_path, path, pixels, *tiling)
    diff = np.abs(tiled - expected)
    assert diff.max() <= 0.02 and diff.mean() <= 0.002
    assert not np.array_equal(tiled, whole)  # several tiles really ran


def test_descriptor_sets_precision_and_size_multiple(nafnet_pth, fftformer_st):
    naf, fft = load_model(nafnet_pth[1]), load_model(fftformer_st[1])
    assert naf.arch_name == "spandrel:NAFNet" and fft.arch_name == "spandrel:FFTformer"
    # spandrel's descriptors: NAFNet and FFTformer are bf16-only, FFTformer pads to 32;
    # NAFNet pads itself to 2**(encoder levels): tiles align to that, so none is zero-padded.
    assert (naf.arch_spec.fp16_safe, naf.arch_spec.bf16_safe) == (False, True)
    assert fft.arch_spec.size_multiple == 32 and naf.arch_spec.size_multiple == 4
    result = runner.invoke(
        app, ["restore", "x.png", "--model", str(nafnet_pth[1]), "--precision", "fp16"]
    )
    assert result.exit_code != 0  # fp16 is refused: the descriptor says it is not supported


def test_pth_is_read_with_weights_only(tmp_path):
    """A pickle that would run code is refused, not executed."""

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    torch.save({"params": Evil()}, path)
    result = runner.invoke(
        app, ["restore", str(PHOTO), "--model", str(path), "-o", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 1
    assert "refused to load" in result.output and "owned" not in result.output


def test_unrecognised_file_is_one_line(tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save({"backbone.conv.weight": torch.zeros(4, 3, 3, 3)}, path)
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["restore", str(PHOTO), "--model", str(path), "-o", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "state dict of 1 tensors" in lines[0] and "spandrel recognises" in lines[0]
    assert not out.exists()


def test_super_resolution_model_is_refused(tmp_path):
    from spandrel.architectures.ESRGAN import ESRGAN

    path = tmp_path / "esrgan.pth"
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict(), path)
    result = runner.invoke(
        app, ["restore", str(PHOTO), "--model", str(path), "-o", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 1
    assert "SR model (scale 4), not an image restoration model" in result.output


def test_without_the_extra_the_line_says_how_to_install(tmp_path, nafnet_pth, monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # import spandrel now fails
    result = runner.invoke(app, ["restore", str(PHOTO), "--model", str(nafnet_pth[1])])
    assert result.exit_code == 1
    assert "pip install 'deblurcli[zoo]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "spandrel:NAFNet" not in result.output


def test_models_lists_external_families():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("spandrel:NAFNet", "spandrel:FFTformer"):
        assert name in result.output
    records = json.loads(runner.invoke(app, ["models", "--json"]).output)
    assert len(records) == 6  # the JSON listing stays the registry's six


def test_eval_scores_a_published_checkpoint(tmp_path, nafnet_pth):
    net, path = nafnet_pth
    sharp = photo_crop(48, 64)
    blurred = np.clip(sharp * 0.9 + 0.05, 0, 1).astype(np.float32)
    write_image(tmp_path / "sharp" / "a.png", ImageData(sharp, bit_depth=16))
    write_image(tmp_path / "blurred" / "a.png", ImageData(blurred, bit_depth=16))
    args = ["eval", "--model", str(path), "--sharp", str(tmp_path / "sharp")]
    args += ["--blurred", str(tmp_path / "blurred"), "--tile", "0", "--device", "cpu", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    restored = _forward(net, read_image(tmp_path / "blurred" / "a.png").pixels)
    target = read_image(tmp_path / "sharp" / "a.png").pixels
    psnr = 10 * np.log10(1 / np.mean((restored - target) ** 2))
    model_row = next(r for r in rows if r["kind"] != "input")
    assert model_row["psnr"] == pytest.approx(psnr, abs=0.02)
