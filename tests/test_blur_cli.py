"""``deblur blur`` end to end: real image files in, paired dataset out, real CLI invocations."""

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
from PIL import Image
from typer.testing import CliRunner

from deblurcli.cli import app
from deblurcli.degradations import (
    DegradeOptions,
    Geometry,
    degrade,
    image_seed,
    load_kernel,
    synthesize_dataset,
)
from deblurcli.imageio import read_image
from tests.conftest import natural_image

runner = CliRunner()


def _u8(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Six small real photos: PNG and JPEG, in a nested folder."""
    src = tmp_path / "photos"
    (src / "trip" / "day2").mkdir(parents=True)
    names = ["a.png", "b.jpg", "trip/c.png", "trip/d.jpeg", "trip/day2/e.png", "trip/day2/f.png"]
    for i, name in enumerate(names):
        Image.fromarray(_u8(natural_image(36, 44, seed=i))).save(src / name)
    return src


def _snapshot(root: Path) -> dict[str, bytes]:
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert not [f for f in files if Path(f).name.startswith(".")], "temporary files left behind"
    return files


def _records(out: Path, name: str = "manifest.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def _blur(*args: str):
    return runner.invoke(app, ["blur", *args])


def test_same_seed_gives_the_same_bytes_with_one_or_two_workers(photos, tmp_path):
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    summary = synthesize_dataset(photos, one, "mix", seed=5, workers=1)
    assert summary.ok and summary.written == 6
    result = _blur(str(photos), "-o", str(two), "--seed", "5", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert _snapshot(one) == _snapshot(two)
    synthesize_dataset(photos, other, "mix", seed=6, workers=2)
    a, b = _snapshot(one), _snapshot(other)
    assert a["sharp/a.png"] == b["sharp/a.png"]
    assert a["blurred/a.png"] != b["blurred/a.png"]


def test_resume_skips_done_images_and_overwrite_redoes_them(photos, tmp_path):
    out = tmp_path / "out"
    first = _blur(str(photos), "-o", str(out), "--kind", "motion", "--limit", "2", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["written"] == 2
    done = {p: p.stat().st_mtime_ns for p in (out / "blurred").rglob("*.*")}
    assert len(done) == 2

    second = _blur(str(photos), "-o", str(out), "--kind", "motion", "--json")
    summary = json.loads(second.stdout)
    assert (summary["written"], len(summary["skipped"])) == (4, 2)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())
    complete = _snapshot(out)

    # A run killed after an image's files but before its manifest line, with a torn last line.
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[1:]) + '\n{"path": "tr')
    third = json.loads(_blur(str(photos), "-o", str(out), "--kind", "motion", "--json").stdout)
    assert (third["written"], len(third["skipped"])) == (1, 5)
    assert _snapshot(out) == complete

    (out / "blurred" / "a.png").write_bytes(b"")  # what a power cut can leave behind
    fourth = json.loads(_blur(str(photos), "-o", str(out), "--kind", "motion", "--json").stdout)
    assert (fourth["written"], len(fourth["skipped"])) == (1, 5)
    assert _snapshot(out) == complete

    again = _blur(str(photos), "-o", str(out), "--kind", "motion", "--overwrite", "--json")
    assert json.loads(again.stdout)["written"] == 6
    assert _snapshot(out) == complete


def test_other_settings_on_an_existing_dataset_need_overwrite(photos, tmp_path):
    out = tmp_path / "out"
    assert _blur(str(photos), "-o", str(out), "--limit", "1").exit_code == 0
    result = _blur(str(photos), "-o", str(out), "--seed", "9")
    assert result.exit_code == 2
    assert "--overwrite" in result.stderr and "Traceback" not in result.output


def test_corrupt_files_are_reported_and_the_rest_completes(photos, tmp_path):
    (photos / "zero.png").write_bytes(b"")
    (photos / "trip" / "notes.jpg").write_text("not a photo")
    good = (photos / "a.png").read_bytes()
    (photos / "trip" / "cut.png").write_bytes(good[: len(good) // 2])
    (photos / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "deblurcli", "blur", str(photos), "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    for name in ("zero.png", "notes.jpg", "cut.png"):
        assert sum(name in line for line in proc.stderr.splitlines()) >= 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["written"] == 6 and len(summary["failed"]) == 3 and summary["total"] == 9
    assert sorted(f["path"] for f in summary["failed"]) == [
        "trip/cut.png",
        "trip/notes.jpg",
        "zero.png",
    ]
    assert len(_records(out)) == 6
    assert not (out / "blurred" / "zero.png").exists()


def _write_depth_alpha_gray(src: Path) -> dict[str, np.ndarray]:
    """16-bit RGB, 16-bit gray, RGBA and 8-bit gray PNGs; returns their pixels as read."""
    src.mkdir()
    rgb = natural_image(32, 40, seed=3)
    rgb16 = np.rint(rgb * 65535).astype(np.uint16)
    cv2.imwrite(str(src / "deep.png"), np.ascontiguousarray(rgb16[..., ::-1]))
    Image.fromarray(rgb16[..., 1]).save(src / "deepgray.png")  # mode I;16
    alpha = np.tile(np.linspace(0, 255, 40, dtype=np.float32), (32, 1)).astype(np.uint8)
    Image.fromarray(np.dstack([_u8(rgb), alpha]), "RGBA").save(src / "alpha.png")
    Image.fromarray(_u8(rgb[..., 0])).save(src / "gray.png")
    return {p.name: read_image(p) for p in src.iterdir()}


@pytest.mark.parametrize("extra", [[], ["--crop", "24"]])
def test_16bit_rgba_and_gray_round_trip(tmp_path, extra):
    sources = _write_depth_alpha_gray(tmp_path / "src")
    out = tmp_path / "out"
    result = _blur(str(tmp_path / "src"), "-o", str(out), "--kind", "defocus", *extra)
    assert result.exit_code == 0, result.output
    for name, src in sources.items():
        sharp, blurred = read_image(out / "sharp" / name), read_image(out / "blurred" / name)
        expect = src.pixels[4:28, 8:32] if extra else src.pixels
        assert sharp.pixels.shape == blurred.pixels.shape == expect.shape
        assert sharp.bit_depth == blurred.bit_depth == src.bit_depth
        np.testing.assert_array_equal(sharp.pixels, expect)
        assert not np.array_equal(blurred.pixels, expect)
        if src.alpha is None:
            assert sharp.alpha is None and blurred.alpha is None
        else:
            want = src.alpha[4:28, 8:32] if extra else src.alpha
            np.testing.assert_array_equal(blurred.alpha, want)  # alpha kept, not blurred
            np.testing.assert_array_equal(sharp.alpha, want)
    assert sources["deep.png"].bit_depth == 16 and sources["deepgray.png"].is_gray
    assert read_image(out / "blurred" / "gray.png").is_gray


def test_manifest_records_match_the_files(photos, tmp_path):
    out = tmp_path / "out"
    assert _blur(str(photos), "-o", str(out), "--kind", "mix", "--seed", "3").exit_code == 0
    records = _records(out)
    assert [r["path"] for r in records] == sorted(
        p.relative_to(photos).as_posix() for p in photos.rglob("*.*")
    )
    for r in records:
        assert r["kind"] == "mix" and r["seed"] == image_seed(3, r["path"])
        sharp = read_image(out / r["sharp"])
        blurred = read_image(out / r["blurred"])
        assert list(sharp.pixels.shape[1::-1]) == list(blurred.pixels.shape[1::-1]) == r["size"]
        kernel = load_kernel(out, r["path"])
        assert kernel is not None and list(kernel.shape) == r["kernel_size"]
        np.testing.assert_array_equal(kernel, np.load(out / r["kernel"], allow_pickle=False))
        # The recorded seed reproduces the blurred image from the sharp one.
        again = degrade(sharp.pixels, r["kind"], np.random.default_rng(r["seed"]))
        np.testing.assert_array_equal(again.kernel, kernel)
        assert (
            again.record["blur_params"] == r["blur_params"] and again.record["noise"] == r["noise"]
        )
        if r["path"].endswith(".png"):
            np.testing.assert_array_equal(_u8(blurred.pixels), _u8(again.image))


def test_noise_kind_has_no_kernel_and_options_are_recorded(photos, tmp_path):
    out = tmp_path / "noise"
    assert _blur(str(photos), "-o", str(out), "--kind", "noise", "--limit", "2").exit_code == 0
    for r in _records(out):
        assert r["kernel"] is None and r["blur"] is None and r["noise"]["sigma"] > 0
        assert load_kernel(out, r["path"]) is None
    out = tmp_path / "seed001"
    args = [
        "--kind",
        "gaussian",
        "--sigma",
        "5",
        "--noise-sigma",
        "0.02",
        "--noise-type",
        "gaussian",
    ]
    result = _blur(str(photos), "-o", str(out), *args, "--jpeg-quality", "80")
    assert result.exit_code == 0, result.output
    for r in _records(out):
        assert r["blur_params"]["sigma_x"] == r["blur_params"]["sigma_y"] == 5.0
        assert r["noise"] == {"type": "gaussian", "sigma": 0.02} and r["jpeg_quality"] == 80


def test_shards_together_equal_one_run(photos, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    synthesize_dataset(photos, whole, "motion", seed=2, workers=1)
    for i in range(3):
        result = _blur(str(photos), "-o", str(split), "--kind", "motion", "--seed", "2",
                       "--shard", f"{i}/3", "--workers", "1")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert len(_records(split, f"manifest.shard-{i}-of-3.jsonl")) == 2
    merge = _blur(str(photos), "-o", str(split), "--kind", "motion", "--seed", "2", "--json")
    assert len(json.loads(merge.stdout)["skipped"]) == 6
    a, b = _snapshot(whole), _snapshot(split)
    assert {k: v for k, v in b.items() if ".shard-" not in k} == a


def test_resize_and_crop_apply_to_both_images(photos, tmp_path):
    out = tmp_path / "resized"
    assert _blur(str(photos), "-o", str(out), "--resize", "40x24", "--limit", "2").exit_code == 0
    for r in _records(out):
        assert r["size"] == [40, 24] and r["source_size"] == [44, 36]
        for side in ("sharp", "blurred"):
            assert read_image(out / r[side]).pixels.shape == (24, 40, 3)
    out = tmp_path / "cropped"
    result = _blur(str(photos), "-o", str(out), "--crop", "40", "--json")
    assert result.exit_code == 1  # 36 px tall images cannot give a 40 px crop
    assert "smaller than --crop 40" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--kind", "sharpen"],
        ["--shard", "3/3"],
        ["--shard", "half"],
        ["--resize", "big"],
        ["--resize", "8x8", "--crop", "8"],
        ["--noise-sigma", "0.5:0.1"],
        ["--sigma", "-1"],
        ["--jpeg-quality", "0:200"],
        ["--noise-type", "pink"],
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(photos, tmp_path, args):
    result = _blur(str(photos), "-o", str(tmp_path / "out"), *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_or_empty_source_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for src in (tmp_path / "nope", tmp_path / "empty"):
        result = _blur(str(src), "-o", str(tmp_path / "out"))
        assert result.exit_code == 2 and str(src) in result.stderr


def test_an_output_folder_that_cannot_be_made_is_one_line(photos, tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    for out in (taken, taken / "sub"):
        result = _blur(str(photos), "-o", str(out), "-j", "1")
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit), result.exception
        assert len(result.stderr.strip().splitlines()) == 1 and str(out) in result.stderr


def test_tiff_layout_tags_are_not_copied_into_the_blurred_tiff(tmp_path):
    """A float TIFF's SampleFormat tag once made every blurred TIFF unreadable."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    Image.fromarray(natural_image(36, 44, seed=3)[..., 0].astype(np.float32)).save(src / "f.tif")
    result = _blur(str(src), "-o", str(out), "--kind", "gaussian", "-j", "1")
    assert result.exit_code == 0, result.output
    sharp, blurred = read_image(out / "sharp" / "f.tif"), read_image(out / "blurred" / "f.tif")
    assert blurred.pixels.shape == sharp.pixels.shape == (36, 44, 1)


def test_output_inside_the_source_is_not_fed_back(photos):
    out = photos / "dataset"
    opts = DegradeOptions(gaussian_sigma=(1.0, 1.0))
    first = synthesize_dataset(photos, out, "gaussian", options=opts, workers=1)
    second = synthesize_dataset(photos, out, "gaussian", options=opts, workers=1)
    assert first.written == 6 and second.total == 6 and len(second.skipped) == 6


def test_progress_callback_sees_every_image(photos, tmp_path):
    events = []
    summary = synthesize_dataset(
        photos, tmp_path / "out", "defocus", geometry=Geometry(crop=30), progress=events.append
    )
    assert summary.ok and [e.done for e in events] == list(range(1, 7))
    assert {e.status for e in events} == {"written"} and events[-1].total == 6


def test_exif_orientation_and_other_formats(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    pixels = _u8(natural_image(36, 44, seed=9))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated to portrait
    Image.fromarray(pixels).save(src / "rotated.jpg", exif=exif, quality=95)
    for suffix in ("bmp", "tif", "webp"):
        Image.fromarray(pixels).save(src / f"plain.{suffix}")
    result = _blur(str(src), "-o", str(out), "--kind", "gaussian", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == 4
    shown = read_image(src / "rotated.jpg").pixels
    assert shown.shape == (44, 36, 3)
    # rotated, so not the source's bytes: the sharp copy is written losslessly (PNG)
    for rel in ("sharp/rotated.png", "blurred/rotated.jpg"):
        again = read_image(out / rel)
        assert again.pixels.shape == (44, 36, 3)
    np.testing.assert_array_equal(read_image(out / "sharp" / "rotated.png").pixels, shown)
    for suffix in ("bmp", "tif", "webp"):
        assert read_image(out / "blurred" / f"plain.{suffix}").pixels.shape == (36, 44, 3)
        assert (out / "sharp" / f"plain.{suffix}").read_bytes() == (
            src / f"plain.{suffix}"
        ).read_bytes()


def test_a_killed_run_leaves_no_truncated_image_and_resumes(tmp_path):
    src, out, clean = tmp_path / "src", tmp_path / "out", tmp_path / "clean"
    src.mkdir()
    for i in range(40):
        Image.fromarray(_u8(natural_image(160, 160, seed=i))).save(src / f"{i:02d}.png")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deblurcli", "blur", str(src), "-o", str(out), "-k", "motion"],
        start_new_session=True,  # its own process group: the kill reaches the workers too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ,
    )
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for path in out.rglob("*.png"):
        if not path.name.startswith("."):
            read_image(path)  # every image in place decodes completely
    resumed = synthesize_dataset(src, out, "motion", workers=1)
    assert resumed.ok and len(resumed.skipped) >= 3 and resumed.written + len(resumed.skipped) == 40
    synthesize_dataset(src, clean, "motion", workers=1)
    assert _snapshot(out) == _snapshot(clean)


def test_find_pairs_reads_the_dataset_and_its_kernels(photos, tmp_path):
    from deblurcli.data.pairs import find_pairs

    out = tmp_path / "out"
    assert synthesize_dataset(photos, out, "motion", workers=1).ok
    scan = find_pairs(out)
    assert not scan.problems and len(scan.pairs) == 6
    assert scan.dataset_root is not None and Path(scan.dataset_root) == out
    for pair in scan.pairs:
        assert (
            pair.sharp == out / "sharp" / pair.name and pair.blurred == out / "blurred" / pair.name
        )
        assert load_kernel(scan.dataset_root, pair.name) is not None


def test_leftover_temp_files_of_redone_images_are_removed(photos, tmp_path):
    out = tmp_path / "out"
    (out / "blurred" / "trip").mkdir(parents=True)
    mine = out / "blurred" / ".a.png.k9qiccnn.part"  # a killed run's half-written a.png
    other = out / "blurred" / "trip" / ".c.png.zzzzzzzz.part"  # not in this --limit selection
    mine.write_bytes(b"\x89PNG half")
    other.write_bytes(b"\x89PNG half")
    assert synthesize_dataset(photos, out, "gaussian", limit=1, workers=1).written == 1
    assert not mine.exists() and other.exists()


def test_progress_bar_on_a_terminal(photos, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from deblurcli.cli import blur as blur_cli

    screen = io.StringIO()
    monkeypatch.setattr(blur_cli, "err_console", Console(file=screen, force_terminal=True))
    (photos / "broken.png").write_bytes(b"junk")
    summary = blur_cli._run_with_progress(photos, tmp_path / "out", "defocus", workers=2)
    assert summary.written == 6 and [p for p, _ in summary.failed] == ["broken.png"]
    assert "broken.png" in screen.getvalue()
