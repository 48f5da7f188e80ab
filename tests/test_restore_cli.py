"""``deblur restore`` end to end: real files, real checkpoints, real CLI invocations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps
from typer.testing import CliRunner

from deblurcli.archs import create, get_spec
from deblurcli.cli import app
from deblurcli.imageio import is_partial_file, read_image
from deblurcli.weights import save_checkpoint
from tests._weights_helpers import write_manifest
from tests.conftest import natural_image

runner = CliRunner()


def _u8(img: np.ndarray) -> np.ndarray:
    return np.rint(img * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def identity_ckpt(tmp_path_factory) -> Path:
    """A real skipae checkpoint whose residual head is zeroed: output == input exactly.

    Lets the I/O tests compare pixels exactly while still running the full pipeline.
    """
    torch.manual_seed(0)
    model = create("skipae", **get_spec("skipae").tiny_config)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "identity.safetensors")


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _invoke(*args: str):
    return runner.invoke(app, ["restore", *map(str, args)])


def test_without_weights_it_refuses_clearly(tmp_path, monkeypatch):
    empty = write_manifest(tmp_path / "manifest" / "empty.toml", [])
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(empty))
    src = _save(tmp_path / "a.png", _u8(natural_image(16, 16)))
    result = _invoke(src)
    assert result.exit_code != 0
    assert "no pretrained weights are available yet" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "manifest"]


def test_single_file_is_written_next_to_the_input(tmp_path, random_ckpt):
    arr = _u8(natural_image(40, 56))
    src = _save(tmp_path / "photo.png", arr)
    result = _invoke(src, "--model", random_ckpt)
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "photo_deblurred.png"))
    assert out.shape == arr.shape and not np.array_equal(out, arr)
    assert np.array_equal(np.asarray(Image.open(src)), arr)  # the input is untouched
    assert "1 done, 0 skipped, 0 failed" in result.output


def test_folder_mirrors_structure_and_resumes(tmp_path, random_ckpt):
    for rel in ("a.png", "sub/b.jpg", "sub/deeper/c.png"):
        _save(tmp_path / "in" / rel, _u8(natural_image(24, 32, seed=len(rel))))
    args = (tmp_path / "in", "-r", "-o", tmp_path / "out", "--model", random_ckpt, "--json")
    first = json.loads(_invoke(*args).output)
    assert len(first["done"]) == 3 and first["failed"] == [] and first["megapixels"] > 0
    assert first["model"] == str(random_ckpt)
    outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert [o for o in outs if "." in o] == ["a.png", "sub/b.jpg", "sub/deeper/c.png"]
    stamp = (tmp_path / "out/a.png").stat().st_mtime_ns
    second = json.loads(_invoke(*args).output)
    assert second["done"] == [] and len(second["skipped"]) == 3
    assert (tmp_path / "out/a.png").stat().st_mtime_ns == stamp
    third = json.loads(_invoke(*args, "--overwrite").output)
    assert len(third["done"]) == 3
    flat = json.loads(
        _invoke(tmp_path / "in", "-o", tmp_path / "flat", "-m", random_ckpt, "--json").output
    )
    assert len(flat["done"]) == 1  # without --recursive only the top level


def test_glob_input(tmp_path, random_ckpt):
    for name in ("x1.png", "x2.png", "y.png"):
        _save(tmp_path / name, _u8(natural_image(16, 16)))
    result = _invoke(str(tmp_path / "x*.png"), "-o", tmp_path / "out", "-m", random_ckpt)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x1.png", "x2.png"]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_comes_out_upright(tmp_path, identity_ckpt, orientation):
    im = Image.fromarray(_u8(natural_image(32, 48)))
    exif = im.getexif()
    exif[0x0112] = orientation
    src = tmp_path / "r.jpg"
    im.save(src, quality=98, exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(src))).astype(np.float32)
    assert _invoke(src, "-m", identity_ckpt).exit_code == 0
    out = Image.open(tmp_path / "r_deblurred.jpg")
    assert out.getexif().get(0x0112, 1) == 1
    pixels = np.asarray(out).astype(np.float32)
    assert pixels.shape == upright.shape
    assert np.abs(pixels - upright).mean() < 3  # only JPEG re-encoding differs


def test_icc_profile_survives(tmp_path, identity_ckpt):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = _save(tmp_path / "c.png", _u8(natural_image(20, 20)), icc_profile=icc)
    assert _invoke(src, "-m", identity_ckpt).exit_code == 0
    assert Image.open(tmp_path / "c_deblurred.png").info.get("icc_profile") == icc


def test_rgba_keeps_alpha_and_colour(tmp_path, identity_ckpt):
    alpha = (np.arange(24 * 28) % 256).reshape(24, 28, 1).astype(np.uint8)
    rgba = np.concatenate([_u8(natural_image(24, 28)), alpha], axis=2)
    src = _save(tmp_path / "t.png", rgba)
    assert _invoke(src, "-m", identity_ckpt).exit_code == 0
    out = Image.open(tmp_path / "t_deblurred.png")
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), rgba)


def test_sixteen_bit_colour_stays_sixteen_bit(tmp_path, identity_ckpt):
    arr = (natural_image(20, 24) * 65535).astype(np.uint16)
    src = tmp_path / "d.png"
    cv2.imwrite(str(src), arr[..., ::-1])
    assert _invoke(src, "-m", identity_ckpt).exit_code == 0
    back = cv2.imread(str(tmp_path / "d_deblurred.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    assert np.abs(back[..., ::-1].astype(np.int64) - arr).max() <= 1


def test_grayscale_in_grayscale_out(tmp_path, identity_ckpt, random_ckpt):
    gray = _u8(natural_image(20, 24))[..., 0]
    src = _save(tmp_path / "g.png", gray)
    assert _invoke(src, "-m", identity_ckpt).exit_code == 0
    out = Image.open(tmp_path / "g_deblurred.png")
    assert out.mode == "L" and np.array_equal(np.asarray(out), gray)
    assert _invoke(src, "-m", random_ckpt, "--suffix", "_r").exit_code == 0
    assert Image.open(tmp_path / "g_r.png").mode == "L"


def test_format_and_side_by_side(tmp_path, identity_ckpt):
    arr = _u8(natural_image(20, 24))
    src = _save(tmp_path / "in" / "s.png", arr)
    out_dir = tmp_path / "out"
    args = (src, "-o", out_dir, "-m", identity_ckpt, "--format", "jpeg", "--side-by-side")
    assert _invoke(*args).exit_code == 0
    out = Image.open(out_dir / "s.jpg")
    assert out.format == "JPEG" and out.size == (48, 20)


def test_bad_inputs_are_reported_and_the_batch_completes(tmp_path, random_ckpt):
    folder = tmp_path / "in"
    _save(folder / "good.png", _u8(natural_image(16, 16)))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"this is not an image")
    full = folder / "full.jpg"
    _save(full, _u8(natural_image(64, 64)))
    (folder / "truncated.jpg").write_bytes(full.read_bytes()[:200])
    full.unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "deblurcli", "restore", str(folder), "-o", str(tmp_path / "out"),
         "-m", str(random_ckpt)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 3
    assert any("empty.png: empty file" in line for line in failed)
    assert "1 done, 0 skipped, 3 failed" in proc.stdout
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]


def test_output_never_overwrites_the_input(tmp_path, random_ckpt):
    src = _save(tmp_path / "a.png", _u8(natural_image(16, 16)))
    before = src.read_bytes()
    result = _invoke(src, "-o", tmp_path, "-m", random_ckpt)
    assert result.exit_code == 1 and "overwrite the input" in result.output
    assert src.read_bytes() == before


def test_python_api(tmp_path, random_ckpt):
    from deblurcli import load_model, restore

    _save(tmp_path / "in" / "a.png", _u8(natural_image(16, 20)))
    summary = restore([tmp_path / "in"], load_model(random_ckpt), tmp_path / "out", tile=0)
    assert summary.ok and len(summary.done) == 1 and summary.megapixels_per_second > 0
    assert (tmp_path / "out" / "a.png").is_file()


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_killed_batch_leaves_no_partial_file(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        create("deblurgan", **get_spec("deblurgan").tiny_config), tmp_path / "g.safetensors"
    )
    for i in range(12):
        _save(tmp_path / "in" / f"{i:02d}.png", _u8(natural_image(160, 160, seed=i)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deblurcli", "restore", str(tmp_path / "in"), "-o", str(out),
           "-m", str(ckpt), "--tile", "96"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(out.glob("*.png")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    results = [p for p in out.iterdir() if not is_partial_file(p)]
    assert 0 < len(results) < 12  # killed mid-way
    for path in results:  # every file at a result path is a complete image
        assert read_image(path).pixels.shape == (160, 160, 3)
    # Resuming finishes the rest, skipping what exists, and clears nothing it should not.
    done = subprocess.run(cmd + ["--json"], env=_env(), capture_output=True, text=True, timeout=300)
    summary = json.loads(done.stdout)
    assert len(summary["skipped"]) == len(results) and len(summary["done"]) == 12 - len(results)


def test_torchrun_two_processes_do_each_file_once(tmp_path, random_ckpt):
    for i in range(5):
        _save(tmp_path / "in" / f"{i}.png", _u8(natural_image(16, 16, seed=i)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "deblurcli", "restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
           "-m", str(random_ckpt), "--device", "cpu", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [
        json.loads(line[line.index("{") :]) for line in proc.stdout.splitlines() if "{" in line
    ]
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    done = [d["path"] for s in summaries for d in s["done"]]
    assert sorted(Path(p).name for p in done) == [f"{i}.png" for i in range(5)]  # each once
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in range(5)]


def test_decompression_bomb_limit_and_max_pixels(tmp_path, random_ckpt, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32×32 = 1024 > 2 × 100: refused
    src = _save(tmp_path / "big.png", _u8(natural_image(32, 32)))
    refused = _invoke(src, "-m", random_ckpt)
    assert refused.exit_code == 1 and "--max-pixels" in refused.output
    allowed = _invoke(src, "-m", random_ckpt, "--max-pixels", "5000")
    assert allowed.exit_code == 0, allowed.output
    assert (tmp_path / "big_deblurred.png").is_file()


def test_tile_device_precision_and_batch_options(tmp_path, random_ckpt):
    src = _save(tmp_path / "p.png", _u8(natural_image(64, 80)))
    runs = {
        "whole": ("--tile", "0"),
        "tiled": ("--tile", "64", "--tile-overlap", "16", "--batch-size", "3"),
        "bf16": ("--device", "cpu", "--precision", "bf16"),
    }
    outs = {}
    for name, extra in runs.items():
        result = _invoke(src, "-m", random_ckpt, "--suffix", f"_{name}", *extra)
        assert result.exit_code == 0, result.output
        outs[name] = np.asarray(Image.open(tmp_path / f"p_{name}.png")).astype(np.float32)
    assert np.abs(outs["tiled"] - outs["whole"]).mean() < 1
    assert np.abs(outs["bf16"] - outs["whole"]).mean() < 4  # bf16 rounding only
    if not torch.cuda.is_available():
        bad = _invoke(src, "-m", random_ckpt, "--device", "cuda", "--suffix", "_x")
        assert bad.exit_code == 2 and "CUDA is not available" in bad.output
    bad_tile = _invoke(src, "-m", random_ckpt, "--tile", "big")
    assert bad_tile.exit_code == 2 and "--tile" in bad_tile.output
    bad_format = _invoke(src, "-m", random_ckpt, "--format", "gif")
    assert bad_format.exit_code == 2 and "--format" in bad_format.output


def test_decoding_overlaps_compute(tmp_path, monkeypatch):
    """The next image is decoded on the I/O pool while the model works on the current one."""
    import threading

    from torch import nn

    from deblurcli import restore
    from deblurcli.inference import batch

    events: list[tuple[str, str, float]] = []
    real_read = batch.read_image

    def read(path):
        events.append(("read", threading.current_thread().name, time.perf_counter()))
        return real_read(path)

    class Slow(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            events.append(("start", "", time.perf_counter()))
            time.sleep(0.3)
            events.append(("end", "", time.perf_counter()))
            return x

    monkeypatch.setattr(batch, "read_image", read)
    for i in range(3):
        _save(tmp_path / "in" / f"{i}.png", _u8(natural_image(16, 16, seed=i)))
    summary = restore([tmp_path / "in"], Slow(), tmp_path / "out", tile=0, device="cpu")
    assert summary.ok and len(summary.done) == 3
    reads = [e for e in events if e[0] == "read"]
    ends = [e[2] for e in events if e[0] == "end"]
    assert all(name.startswith("deblur-io") for _, name, _ in reads)
    assert reads[1][2] < ends[0] and reads[2][2] < ends[1]  # decoded during the compute


def test_folder_without_images_is_reported(tmp_path, random_ckpt):
    (tmp_path / "empty").mkdir()
    _save(tmp_path / "nested" / "sub" / "a.png", _u8(natural_image(16, 16)))
    for folder in ("empty", "nested"):
        result = _invoke(tmp_path / folder, "-o", tmp_path / "out", "-m", random_ckpt)
        assert result.exit_code == 1, result.output
        assert "no images found" in result.output
        assert "Traceback" not in result.output


def test_bad_precision_is_one_usage_error(tmp_path, random_ckpt):
    for name in ("a", "b"):
        _save(tmp_path / "in" / f"{name}.png", _u8(natural_image(16, 16)))
    result = _invoke(tmp_path / "in", "-m", random_ckpt, "--precision", "fp8")
    assert result.exit_code == 2, result.output
    assert result.output.count("unknown precision") == 1 and "failed:" not in result.output
    assert not list((tmp_path / "in").glob("*_deblurred*"))


def test_output_folder_equal_to_the_input_folder(tmp_path, random_ckpt):
    folder = tmp_path / "photos"
    _save(folder / "a.png", _u8(natural_image(16, 16)))
    result = _invoke(folder, "-o", folder, "--suffix", "_x", "-m", random_ckpt)
    assert result.exit_code == 0 and "1 done" in result.output, result.output
    again = _invoke(folder, "-o", folder, "--suffix", "_x", "-m", random_ckpt)
    assert "0 done, 1 skipped" in again.output  # its own output is not an input
    refused = _invoke(folder, "-o", folder, "-m", random_ckpt)
    assert refused.exit_code == 1 and "would overwrite the input" in refused.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_x.png"]


def test_out_of_memory_decoding_one_file_does_not_stop_the_batch(
    tmp_path, random_ckpt, monkeypatch
):
    from deblurcli import load_model, restore
    from deblurcli.inference import batch

    for name in ("a", "huge", "z"):
        _save(tmp_path / "in" / f"{name}.png", _u8(natural_image(16, 16)))

    def read(path):
        if Path(path).stem == "huge":
            raise MemoryError
        return read_image(path)

    monkeypatch.setattr(batch, "read_image", read)
    summary = restore([tmp_path / "in"], load_model(random_ckpt), tmp_path / "out", tile=0)
    assert [Path(p).name for p in summary.done] == ["a.png", "z.png"]
    assert [(Path(p).name, e) for p, e in summary.failed] == [
        ("huge.png", "out of memory while decoding")
    ]
