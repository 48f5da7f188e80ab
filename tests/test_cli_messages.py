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
from deblurcli.archs import create, default_parameter_count, get_spec, list_archs
from deblurcli.cli import app
from deblurcli.degradations import convolve, linear_motion_kernel
from deblurcli.imageio import read_image
from deblurcli.inference.classical import UNSHARP_DEFAULTS, unsharp_mask
from deblurcli.metrics import psnr
from deblurcli.weights import save_checkpoint
from tests._loopback_hub import LoopbackHub
from tests.conftest import natural_image

runner = CliRunner()


def _save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.safetensors")


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


def test_runtime_failure_exits_1(tmp_path, ckpt):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    result = runner.invoke(app, ["restore", str(tmp_path / "bad.png"), "-m", str(ckpt)])
    assert result.exit_code == 1 and "bad.png" in result.stderr


# ---------------------------------------------------------------- restore's output
def test_restore_summary_json_and_finished_megapixels(tmp_path, ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "a.png", natural_image(64, 80))
    _save(src / "sub" / "b.png", natural_image(48, 48, seed=1))
    out.mkdir()
    (out / "sub").write_text("a file where the output folder 'sub' must go")
    args = ["restore", str(src), "-r", "-m", str(ckpt), "-o", str(out), "--device", "cpu"]
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
    assert f"0 done, 1 skipped, 1 failed with {ckpt} on cpu, fp32 → {out}" in again.stdout
    skipped = json.loads(runner.invoke(app, [*args, "--json"]).stdout)["skipped"]
    assert skipped == [{"path": str(src / "a.png"), "output": str(out / "a.png")}]


def test_restore_summary_names_folder_device_precision(tmp_path, ckpt):
    img = _save(tmp_path / "a.png", natural_image(64, 64))
    result = runner.invoke(app, ["restore", str(img), "-m", str(ckpt), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("1 done, 0 skipped, 0 failed; 0.00 MP in ")
    assert line.endswith(f"with {ckpt} on cpu, fp32 → {tmp_path / 'o'}")


def test_fatal_error_with_json_is_json(tmp_path):
    img = _save(tmp_path / "a.png", natural_image(32, 32))
    result = runner.invoke(app, ["restore", str(img), "-m", "nope", "--json"])
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert "not a pretrained model" in payload["error"] and payload["exit_code"] == 2


def test_skipped_is_a_list_in_every_json(tmp_path, ckpt):
    src = tmp_path / "photos"
    for i in range(2):
        _save(src / f"p{i}.png", natural_image(40, 40, seed=i))
    blur = ["blur", str(src), "-o", str(tmp_path / "pairs"), "--json", "-j", "1"]
    assert json.loads(runner.invoke(app, blur).stdout)["skipped"] == []
    assert json.loads(runner.invoke(app, blur).stdout)["skipped"] == [
        {"path": "p0.png"},
        {"path": "p1.png"},
    ]
    restore = ["restore", str(src / "p0.png"), "-m", str(ckpt), "-o", str(tmp_path / "r"), "--json"]
    assert json.loads(runner.invoke(app, restore).stdout)["skipped"] == []
    ev = ["eval", "-m", "identity", "--data", str(tmp_path / "pairs"), "--json"]
    assert json.loads(runner.invoke(app, ev).stdout)["skipped"] == []


# ---------------------------------------------------------------- tiles
def test_tile_checks(tmp_path, ckpt):
    img = _save(tmp_path / "a.png", natural_image(96, 96))
    base = ["restore", str(img), "-m", str(ckpt), "-o", str(tmp_path / "o")]
    small = runner.invoke(app, [*base, "--tile", "32"])
    assert (
        small.exit_code == 2 and "--tile 32 is too small" in small.stderr and "64" in small.stderr
    )
    negative = runner.invoke(app, [*base, "--tile", "64", "--tile-overlap", "-1"])
    assert negative.exit_code == 2 and "--tile-overlap" in negative.output
    assert not (tmp_path / "o").exists()


def test_large_overlap_warns_with_a_size(tmp_path, ckpt, caplog):
    img = _save(tmp_path / "a.png", natural_image(96, 96))
    args = ["restore", str(img), "-m", str(ckpt), "-o", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--tile", "64", "--tile-overlap", "32"])
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "--tile-overlap 32 is half of --tile 64" in w and "--tile 128" in w for w in warnings
    )


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
