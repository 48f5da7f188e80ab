"""What the CLI tells the user (issue 15): version, help, exit codes, restore's summary and
JSON, tiles, .pth files, an unreachable Hub, models and weights tables, classical models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deblurcli import __version__
from deblurcli.archs import create, default_parameter_count, list_archs
from deblurcli.cli import app
from deblurcli.cli._common import flag_naming
from deblurcli.degradations import convolve, linear_motion_kernel
from deblurcli.imageio import read_image
from deblurcli.inference.classical import UNSHARP_DEFAULTS, unsharp_mask
from deblurcli.metrics import psnr
from tests._loopback_hub import LoopbackHub
from tests.conftest import natural_image

runner = CliRunner()


def _save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- version, help, exit codes
def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"deblur {__version__}"


@pytest.mark.parametrize(
    "command",
    [[], ["blur"], ["train"], ["eval"], ["restore"], ["models"], ["weights"], ["weights", "list"],
     ["weights", "show"], ["weights", "download"], ["data"]],
)  # fmt: skip
def test_dash_h_is_help_everywhere(command):
    short = runner.invoke(app, [*command, "-h"])
    long = runner.invoke(app, [*command, "--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout and "Usage:" in short.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--arch", "nope", "--data", "."],  # unknown --arch
        ["restore", "x.png", "-m", "nope"],  # unknown -m
        ["eval", "-m", "nope", "--data", "."],
        ["blur", ".", "-o", "out", "--kind", "nope"],  # unknown --kind
        ["train", "--arch", "simplecnn"],  # missing --data
        ["eval", "-m", "identity"],
    ],
)
def test_usage_errors_exit_2_in_one_line(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "x.png", natural_image(32, 32))
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")


def test_runtime_failure_exits_1(tmp_path, random_ckpt):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    result = runner.invoke(app, ["restore", str(tmp_path / "bad.png"), "-m", str(random_ckpt)])
    assert result.exit_code == 1 and "bad.png" in result.stderr


# ---------------------------------------------------------------- restore's output
def test_restore_summary_json_and_finished_megapixels(tmp_path, random_ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "a.png", natural_image(64, 80))
    _save(src / "sub" / "b.png", natural_image(48, 48, seed=1))
    out.mkdir()
    (out / "sub").write_text("a file where the output folder 'sub' must go")
    args = ["restore", str(src), "-r", "-m", str(random_ckpt), "-o", str(out), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["done"] == [{"path": str(src / "a.png"), "output": str(out / "a.png")}]
    assert [f["path"] for f in summary["failed"]] == [str(src / "sub" / "b.png")]
    assert summary["megapixels"] == pytest.approx(64 * 80 / 1e6)  # the failed write adds none
    assert (summary["device"], summary["precision"], summary["output"]) == ("cpu", "fp32", str(out))
    assert read_image(out / "a.png").pixels.shape == (64, 80, 3)

    again = runner.invoke(app, args)  # a.png is skipped now; b.png fails again
    assert again.exit_code == 1
    assert f"0 done, 1 skipped, 1 failed with {random_ckpt} on cpu, fp32 → {out}" in again.stdout
    skipped = json.loads(runner.invoke(app, [*args, "--json"]).stdout)["skipped"]
    assert skipped == [{"path": str(src / "a.png"), "output": str(out / "a.png")}]


def test_restore_summary_names_folder_device_precision(tmp_path, random_ckpt):
    img = _save(tmp_path / "a.png", natural_image(64, 64))
    result = runner.invoke(
        app, ["restore", str(img), "-m", str(random_ckpt), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("1 done, 0 skipped, 0 failed; 0.00 MP in ")
    assert line.endswith(f"with {random_ckpt} on cpu, fp32 → {tmp_path / 'o'}")


def test_fatal_error_with_json_is_json(tmp_path):
    img = _save(tmp_path / "a.png", natural_image(32, 32))
    result = runner.invoke(app, ["restore", str(img), "-m", "nope", "--json"])
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert "not a pretrained model" in payload["error"] and payload["exit_code"] == 2


def test_skipped_is_a_list_in_every_json(tmp_path, random_ckpt):
    src = tmp_path / "photos"
    for i in range(2):
        _save(src / f"p{i}.png", natural_image(40, 40, seed=i))
    blur = ["blur", str(src), "-o", str(tmp_path / "pairs"), "--json", "-j", "1"]
    assert json.loads(runner.invoke(app, blur).stdout)["skipped"] == []
    assert json.loads(runner.invoke(app, blur).stdout)["skipped"] == [
        {"path": "p0.png"},
        {"path": "p1.png"},
    ]
    restore = [
        "restore",
        str(src / "p0.png"),
        "-m",
        str(random_ckpt),
        "-o",
        str(tmp_path / "r"),
        "--json",
    ]
    assert json.loads(runner.invoke(app, restore).stdout)["skipped"] == []
    ev = ["eval", "-m", "identity", "--data", str(tmp_path / "pairs"), "--json"]
    assert json.loads(runner.invoke(app, ev).stdout)["skipped"] == []


# ---------------------------------------------------------------- tiles
def test_tile_checks(tmp_path, random_ckpt):
    img = _save(tmp_path / "a.png", natural_image(96, 96))
    base = ["restore", str(img), "-m", str(random_ckpt), "-o", str(tmp_path / "o")]
    small = runner.invoke(app, [*base, "--tile", "32"])
    assert (
        small.exit_code == 2 and "--tile 32 is too small" in small.stderr and "64" in small.stderr
    )
    negative = runner.invoke(app, [*base, "--tile", "64", "--tile-overlap", "-1"])
    assert negative.exit_code == 2 and "--tile-overlap" in negative.output
    assert not (tmp_path / "o").exists()
    pairs = tmp_path / "pairs"
    _save(pairs / "sharp" / "a.png", natural_image(96, 96))
    _save(pairs / "blurred" / "a.png", natural_image(96, 96, seed=2))
    ev = runner.invoke(app, ["eval", "-m", str(random_ckpt), "--data", str(pairs), "--tile", "32"])
    assert ev.exit_code == 2 and "--tile 32 is too small" in ev.stderr


def test_large_overlap_warns_with_a_size(tmp_path, random_ckpt, caplog):
    img = _save(tmp_path / "a.png", natural_image(96, 96))
    args = ["restore", str(img), "-m", str(random_ckpt), "-o", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--tile", "64", "--tile-overlap", "32"])
    assert result.exit_code == 0, result.output
    record = next(r for r in caplog.records if "is half of" in r.getMessage())
    # The library names parameters; the deblur command's log filter prints the flags.
    assert "tile_overlap 32 is half of tile 64" in record.getMessage()
    flag_naming(record)
    assert "--tile-overlap 32 is half of --tile 64" in record.getMessage()
    assert "use --tile 128 or more (or a smaller --tile-overlap)" in record.getMessage()


# ---------------------------------------------------------------- weights without metadata
def test_pth_needs_arch_and_restore_and_eval_take_it(tmp_path):
    torch.manual_seed(0)
    model = create("simplecnn")
    torch.save(model.state_dict(), tmp_path / "old.pth")
    img = _save(tmp_path / "a.png", natural_image(32, 32))
    out = tmp_path / "o.png"
    base = ["restore", str(img), "-m", str(tmp_path / "old.pth"), "-o", str(out)]
    missing = runner.invoke(app, base)
    assert missing.exit_code == 1
    assert "--arch NAME" in missing.stderr and "deblur eval --arch" in missing.stderr
    assert runner.invoke(app, [*base, "--arch", "nope"]).exit_code == 2
    ok = runner.invoke(app, [*base, "--arch", "simplecnn"])
    assert ok.exit_code == 0, ok.output
    with torch.no_grad():
        x = torch.from_numpy(read_image(img).pixels).permute(2, 0, 1)[None]
        expected = model(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(read_image(out).pixels - expected).max() <= 1 / 255 + 1e-6

    pairs = tmp_path / "pairs"
    _save(pairs / "sharp" / "a.png", natural_image(32, 32))
    _save(pairs / "blurred" / "a.png", natural_image(32, 32, seed=3))
    ev = ["eval", "-m", str(tmp_path / "old.pth"), "--data", str(pairs), "--json"]
    assert runner.invoke(app, ev).exit_code == 1
    scored = runner.invoke(app, [*ev, "--arch", "simplecnn"])
    assert scored.exit_code == 0, scored.output
    assert [r["key"] for r in json.loads(scored.stdout)["rows"]] == ["blurry", "old.pth"]


# ---------------------------------------------------------------- the Hub, unreachable
def test_unreachable_hub_is_one_line_within_seconds(tmp_path, monkeypatch):
    hub = LoopbackHub()
    hub.close()  # a closed port: connections are refused, as with no network
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    img = _save(tmp_path / "a.png", natural_image(32, 32))
    start = time.perf_counter()
    result = runner.invoke(app, ["restore", str(img), "-m", "hf://owner/repo/model.safetensors"])
    assert time.perf_counter() - start < 8
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "the Hub cannot be reached" in result.stderr
    assert "Retrying" not in result.output


# ---------------------------------------------------------------- models
def test_models_shows_shipped_and_paper_configs_without_internal_words():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "seed" not in result.stdout.lower()
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "paper config" in result.stdout
    records = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "--json"]).stdout)}
    for name in list_archs():
        assert "seed" not in records[name]["source"].lower()
    # deblurgan ships at ngf=32 (the manifest's config); the paper's ngf=64 is 4x larger
    assert records["deblurgan"]["shipped_parameters"] == default_parameter_count(
        "deblurgan", ngf=32
    )
    assert records["deblurgan"]["parameters"] == default_parameter_count("deblurgan")
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("deblurgan"))
    shipped, paper = records["deblurgan"]["shipped_parameters"], records["deblurgan"]["parameters"]
    assert f"{shipped:,}" in line and f"{paper:,}" in line


# ---------------------------------------------------------------- classical models
def test_restore_unsharp_uses_the_tuned_defaults(tmp_path):
    sharp = natural_image(64, 72)
    img = _save(tmp_path / "a.png", sharp)
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["restore", str(img), "--model", "unsharp", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "with unsharp" in result.stdout
    expected = unsharp_mask(read_image(img).pixels, **UNSHARP_DEFAULTS)
    assert np.abs(read_image(out).pixels - expected).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("method", ["wiener", "richardson-lucy"])
def test_restore_deconvolves_with_a_known_kernel(tmp_path, method):
    sharp = natural_image(96, 96, seed=4)
    kernel = linear_motion_kernel(9, 30.0).astype(np.float32)
    blurred = np.clip(convolve(sharp, kernel), 0, 1)
    img = _save(tmp_path / "blurred.png", blurred)
    np.save(tmp_path / "k.npy", kernel)
    out = tmp_path / "o.png"
    args = ["restore", str(img), "--model", method, "--kernel", str(tmp_path / "k.npy")]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    ref = torch.from_numpy(sharp)
    before = float(psnr(torch.from_numpy(read_image(img).pixels), ref))
    after = float(psnr(torch.from_numpy(read_image(out).pixels), ref))
    assert after > before + 1.0, (before, after)


def test_classical_kernel_usage_errors(tmp_path):
    img = _save(tmp_path / "a.png", natural_image(32, 32))
    np.save(tmp_path / "k.npy", np.ones((3, 3), np.float32))
    np.save(tmp_path / "bad.npy", np.ones(3, np.float32))
    base = ["restore", str(img), "-o", str(tmp_path / "o.png")]
    cases = [
        (["--model", "wiener"], "needs --kernel"),
        (["--model", "unsharp", "--kernel", str(tmp_path / "k.npy")], "--kernel is for"),
        (["--model", "wiener", "--kernel", str(tmp_path / "bad.npy")], "2-D array"),
        (["--model", "wiener", "--kernel", str(tmp_path / "none.npy")], "no such file"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- deblur blur
def _jpeg(path: Path, img: np.ndarray, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path, quality=quality)
    return path


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {r["path"]: r for r in map(json.loads, lines)}


def test_blur_never_recompresses_sharp_jpegs(tmp_path):
    src = tmp_path / "src"
    photo = _jpeg(src / "a.jpg", natural_image(80, 96))
    same = tmp_path / "same"
    args = ["blur", str(src), "--kind", "gaussian", "-j", "1"]
    assert runner.invoke(app, [*args, "-o", str(same)]).exit_code == 0
    assert (same / "sharp" / "a.jpg").read_bytes() == photo.read_bytes()  # copied as is
    record = _records(same)["a.jpg"]
    assert record["blurred"] == "blurred/a.jpg" and record["blurred_jpeg_quality"] == 95

    cropped = tmp_path / "cropped"
    assert runner.invoke(app, [*args, "-o", str(cropped), "--crop", "64"]).exit_code == 0
    record = _records(cropped)["a.jpg"]
    assert record["sharp"] == "sharp/a.png"  # cropped: written losslessly, not re-encoded
    decoded = read_image(photo).pixels[8:72, 16:80]
    assert np.array_equal(read_image(cropped / record["sharp"]).pixels, decoded)
    pairs = runner.invoke(app, ["eval", "-m", "identity", "--data", str(cropped), "--json"])
    assert pairs.exit_code == 0 and json.loads(pairs.stdout)["settings"]["pairs_scored"] == 1


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_blur_format_option(tmp_path, fmt):
    src = tmp_path / "src"
    _save(src / "a.png", natural_image(64, 64))
    _jpeg(src / "b.jpg", natural_image(64, 64, seed=2))
    out = tmp_path / "out"
    result = runner.invoke(app, ["blur", str(src), "-o", str(out), "--format", fmt, "-j", "1"])
    assert result.exit_code == 0, result.output
    ext = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}[fmt]
    records = _records(out)
    assert sorted(records) == [f"a{ext}", f"b{ext}"]
    for rel, record in records.items():
        blurred = Image.open(out / record["blurred"])
        assert blurred.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt]
        assert record["blurred_jpeg_quality"] == (95 if fmt == "jpg" else None)
        assert Image.open(out / record["sharp"]).format != "JPEG" or record["source"] == "b.jpg"
        kernel = out / record["kernel"] if record["kernel"] else None
        assert kernel is None or kernel.name == f"{rel}.npy"
    if fmt == "webp":  # lossless: the sharp copy is the source's pixels exactly
        sharp = read_image(out / records["a.webp"]["sharp"]).pixels
        assert np.array_equal(sharp, read_image(src / "a.png").pixels)
    again = runner.invoke(app, ["blur", str(src), "-o", str(out), "--format", fmt, "--json"])
    assert len(json.loads(again.stdout)["skipped"]) == 2  # resumes with the new names
    bad = runner.invoke(app, ["blur", str(src), "-o", str(out), "--format", "gif"])
    assert bad.exit_code == 2 and "--format" in bad.stderr


def test_blur_manifest_records_every_jpeg_quality(tmp_path):
    src = tmp_path / "src"
    _jpeg(src / "a.jpg", natural_image(48, 48))
    out = tmp_path / "out"
    args = ["blur", str(src), "-o", str(out), "--kind", "gaussian", "--jpeg-quality", "70"]
    assert runner.invoke(app, [*args, "-j", "1"]).exit_code == 0
    record = _records(out)["a.jpg"]
    assert (record["jpeg_quality"], record["blurred_jpeg_quality"]) == (70, 95)


def test_blur_too_large_names_an_option_it_has(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _save(src / "big.png", natural_image(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 > 2 × 1000: refused
    out = tmp_path / "out"
    refused = runner.invoke(app, ["blur", str(src), "-o", str(out), "-j", "1"])
    assert refused.exit_code == 1 and "--max-pixels" in refused.output
    help_text = runner.invoke(app, ["blur", "--help"]).stdout
    assert "--max-pixels" in help_text
    allowed = runner.invoke(app, ["blur", str(src), "-o", str(out), "-j", "1", "--max-pixels", "0"])
    assert allowed.exit_code == 0, allowed.output
    assert (out / "blurred" / "big.png").is_file()


def test_blur_into_its_own_source_folder(tmp_path):
    src = tmp_path / "src"
    _save(src / "a.png", natural_image(32, 32))
    result = runner.invoke(app, ["blur", str(src), "-o", str(src)])
    assert result.exit_code == 2 and "is the source folder itself" in result.stderr
    assert "no images found" not in result.stderr
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]


# ---------------------------------------------------------------- deblur train
def test_train_help_documents_every_option():
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    assert "%%" not in text and "runs/ARCH" in text
    rows = [
        line for line in text.splitlines() if line.startswith("│") and "--" in line[:25]
    ]  # the options panel, not the description
    assert len(rows) > 20
    for row in rows:  # "--name  -x  <type>  help text": no option without its help
        cells = row.strip("│ ").split("  ")
        assert len([c for c in cells if c.strip()]) >= 3, row


def _pairs(root: Path, n: int = 4) -> Path:
    for i in range(n):
        sharp = natural_image(48, 48, seed=i)
        _save(root / "sharp" / f"{i}.png", sharp)
        _save(
            root / "blurred" / f"{i}.png", np.clip(convolve(sharp, np.full((5, 5), 1 / 25)), 0, 1)
        )
    return root


def test_train_summary_and_curves_compare_with_the_blurry_input(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    data = _pairs(tmp_path / "pairs")
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig) or close(fig))
    run = tmp_path / "run"
    args = ["train", "--arch", "simplecnn", "--width", "tiny", "--data", str(data)]
    args += ["--val", str(data), "--steps", "4", "--val-every", "2", "--patch-size", "32"]
    args += ["--batch-size", "2", "--workers", "0", "--loss", "mse", "-o", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    def pixels(folder: str, i: int) -> torch.Tensor:
        return torch.from_numpy(read_image(data / folder / f"{i}.png").pixels)

    # validation crops are up to 256 px: these 48 px images are scored whole
    blurry = np.mean([float(psnr(pixels("blurred", i), pixels("sharp", i))) for i in range(4)])
    summary = json.loads(runner.invoke(app, [*args, "--resume", "--steps", "6", "--json"]).stdout)
    assert summary["blurry_psnr"] == pytest.approx(blurry, abs=1e-4)
    assert summary["skipped"] == []  # the shape every command's JSON uses
    assert f"(blurry input {summary['blurry_psnr']:.2f} dB on the same pairs)" in result.stdout
    ax = figures[0].axes[0]
    assert ax.get_title() and ax.get_xlabel() == "step" and ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["train loss", "val PSNR"] and labels[2].startswith("blurry input")
    psnr_axis = figures[0].axes[1]
    assert psnr_axis.get_ylabel() == "validation PSNR (dB)"
    flat = [line.get_ydata() for line in psnr_axis.lines if len(set(line.get_ydata())) == 1]
    assert [float(y[0]) for y in flat] == [pytest.approx(summary["blurry_psnr"], abs=1e-3)]
    assert (run / "curves.png").is_file()


def test_train_warns_about_vgg_only_after_the_arguments_are_good(tmp_path, caplog):
    # simplecnn's recipe has a VGG19 perceptual term and no VGG19 weights are on this machine
    result = runner.invoke(app, ["train", "--arch", "simplecnn", "--data", str(tmp_path / "no")])
    assert result.exit_code == 2
    assert "VGG" not in result.output and result.stderr.count("\n") == 1
    assert not [r for r in caplog.records if "VGG" in r.getMessage()]


def test_restore_progress_bar_shows_eta_and_mp_per_second(tmp_path, random_ckpt):
    import io

    from rich.console import Console

    from deblurcli.cli import restore as restore_cli
    from deblurcli.inference.batch import restore

    for i in range(3):
        _save(tmp_path / "in" / f"{i}.png", natural_image(64, 64, seed=i))
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    progress = restore_cli._progress_bar(console, enabled=True)
    reporter = restore_cli._RichReporter(progress)
    with progress:
        summary = restore([tmp_path / "in"], random_ckpt, tmp_path / "out", reporter=reporter)
        task = progress.tasks[reporter.images]
        assert task.completed == 3 and task.fields["rate"].endswith(" MP/s")
        progress.refresh()
    assert reporter.megapixels == pytest.approx(summary.megapixels) == 3 * 64 * 64 / 1e6
    text = screen.getvalue()
    assert "eta" in text and "MP/s" in text and "3/3" in text
