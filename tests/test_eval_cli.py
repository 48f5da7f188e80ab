"""``deblur eval`` through real invocations on real files written to a temporary folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import convolve
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from typer.testing import CliRunner

from deblurcli.archs import create, get_spec
from deblurcli.cli import app
from deblurcli.evaluation.report import REPORT_FILES
from deblurcli.imageio import ImageData, read_image, write_image
from deblurcli.weights import save_checkpoint
from tests.conftest import natural_image

runner = CliRunner()
SIZE = (45, 58)  # odd height: exercises the models' size-multiple padding


def _kernel(kind: str, i: int) -> np.ndarray:
    if kind == "gaussian":
        yy, xx = np.mgrid[-4:5, -4:5]
        k = np.exp(-(xx**2 + yy**2) / (2 * (1.0 + 0.3 * i) ** 2))
    else:  # a bent motion path
        k = np.zeros((9, 9))
        k[4, 1:8] = 1
        k[3, 6 - i % 3] = 1
    return (k / k.sum()).astype(np.float32)


def make_dataset(root: Path, n: int = 6, size: tuple[int, int] = SIZE) -> Path:
    """A ``deblur blur`` layout: sharp/, blurred/, kernels/*.npy and manifest.jsonl."""
    records = []
    for i in range(n):
        kind = "gaussian" if i % 2 == 0 else "motion"
        rel = f"{kind}/img{i}.png"
        sharp = natural_image(*size, seed=i)
        kernel = _kernel(kind, i)
        blurred = np.stack([convolve(sharp[..., c], kernel, mode="reflect") for c in range(3)], -1)
        write_image(root / "sharp" / rel, ImageData(sharp))
        write_image(root / "blurred" / rel, ImageData(np.clip(blurred, 0, 1)))
        (root / "kernels" / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / "kernels" / f"{rel}.npy", kernel)
        records.append({"path": rel, "kind": kind, "seed": i, "kernel": f"kernels/{rel}.npy"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def identity_checkpoint(path: Path) -> Path:
    """A real residual model (skipae) whose last layer is zero: its output is its input."""
    model = create("skipae", **get_spec("skipae").tiny_config)
    for p in model.out.parameters():
        torch.nn.init.zeros_(p)
    return save_checkpoint(model, path)


def random_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(create("simplecnn", **get_spec("simplecnn").tiny_config), path)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "pairs")


def run_json(*args: str) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["eval", *args, "--json"])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout), result.stderr


def rows_by_key(summary: dict) -> dict[str, dict]:
    return {r["key"]: r for r in summary["rows"]}


def test_blurry_row_matches_skimage_on_the_files(dataset: Path) -> None:
    code, summary, _ = run_json("--model", "identity", "--data", str(dataset))
    assert code == 0
    p, s = [], []
    for path in sorted((dataset / "sharp").rglob("*.png")):
        a = read_image(path).pixels.astype(np.float64)
        b = read_image(dataset / "blurred" / path.relative_to(dataset / "sharp")).pixels
        p.append(peak_signal_noise_ratio(a, b.astype(np.float64), data_range=1))
        s.append(
            structural_similarity(
                a, b.astype(np.float64), channel_axis=2, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False, data_range=1,
            )
        )  # fmt: skip
    blurry = rows_by_key(summary)["blurry"]
    assert blurry["kind"] == "input" and blurry["images"] == 6
    assert blurry["psnr"] == pytest.approx(np.mean(p), abs=1e-6)
    assert blurry["ssim"] == pytest.approx(np.mean(s), abs=1e-7)
    assert set(blurry["families"]) == {"gaussian", "motion"}


def test_identity_model_and_baseline_score_exactly_the_blurry_input(
    dataset: Path, tmp_path: Path
) -> None:
    ckpt = identity_checkpoint(tmp_path / "identity" / "model.safetensors")
    code, summary, _ = run_json("-m", "identity", "-m", str(ckpt), "--data", str(dataset))
    assert code == 0
    rows = summary["rows"]
    assert [r["kind"] for r in rows] == ["input", "baseline", "model"]
    blurry = rows[0]
    for row in rows[1:]:
        assert row["psnr"] == blurry["psnr"] and row["ssim"] == blurry["ssim"]
        assert row["psnr_gain"] == 0.0 and row["ssim_gain"] == 0.0
        assert row["families"] == {
            f: {**v, "psnr_gain": 0.0, "ssim_gain": 0.0} for f, v in blurry["families"].items()
        }
    assert rows[2]["params"] == sum(p.numel() for p in create("skipae", width=4).parameters())
    assert rows[2]["mp_per_s"] > 0


def test_several_models_one_table_and_the_crop_and_y_options(dataset: Path, tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "rand.safetensors")
    args = ["-m", "unsharp", "-m", str(ckpt), "-m", "wiener", "--data", str(dataset)]
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    for text in ("blurry input", "unsharp", "rand.safetensors", "wiener", "gain dB", "non-blind"):
        assert text in result.stdout
    _, plain, _ = run_json(*args)
    _, conv, _ = run_json(*args, "--crop-border", "4", "--y-channel")
    assert conv["settings"]["crop_border"] == 4 and conv["settings"]["y_channel"] is True
    for a, b in zip(plain["rows"], conv["rows"], strict=True):
        assert a["key"] == b["key"] and a["psnr"] != pytest.approx(b["psnr"], abs=1e-3)
    rows = rows_by_key(plain)
    assert rows["unsharp"]["psnr_gain"] > 0  # tuned: never worse than doing nothing here
    assert set(rows["unsharp"]["settings"]) == {"sigma", "amount"}
    assert rows["wiener"]["non_blind"] is True


def test_wiener_with_the_true_kernel_beats_the_blurry_input(dataset: Path) -> None:
    code, summary, _ = run_json("-m", "wiener", "--data", str(dataset))
    assert code == 0
    wiener = rows_by_key(summary)["wiener"]
    assert wiener["psnr_gain"] > 2.0
    assert all(v["psnr_gain"] > 1.0 for v in wiener["families"].values())


def test_report_folder_has_every_file(dataset: Path, tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "rand.safetensors")
    report = tmp_path / "report"
    cmd = [sys.executable, "-m", "deblurcli", "eval", "-m", "identity", "-m", "unsharp"]
    cmd += ["-m", str(ckpt), "--data", str(dataset), "--report", str(report), "--sample", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=os.environ)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in report.iterdir()) == sorted(REPORT_FILES)
    summary = json.loads((report / "summary.json").read_text())
    with open(report / "per_image.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 * 4  # images × (blurry + three models)
    for row in summary["rows"]:
        mine = [float(r["psnr"]) for r in table if r["model"] == row["key"]]
        assert len(mine) == 6 and np.mean(mine) == pytest.approx(row["psnr"], abs=1e-3)
    assert {r["family"] for r in table} == {"gaussian", "motion"}
    with Image.open(report / "comparison.png") as grid:
        # 5 columns (blurry | 3 models | sharp), 2 samples × (picture + zoomed detail) rows
        assert grid.format == "PNG" and grid.width > 900 and grid.height > 700
        assert np.asarray(grid.convert("L")).std() > 20  # pictures, not a blank canvas
    with Image.open(report / "psnr_gain.png") as plot:
        assert plot.format == "PNG" and plot.width >= 600


def test_bad_pairs_are_skipped_reported_and_fail_the_exit_code(dataset: Path) -> None:
    write_image(dataset / "sharp" / "bad" / "small.png", ImageData(natural_image(30, 30)))
    write_image(dataset / "blurred" / "bad" / "small.png", ImageData(natural_image(32, 30)))
    write_image(dataset / "sharp" / "bad" / "corrupt.png", ImageData(natural_image(30, 30)))
    (dataset / "blurred" / "bad" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, summary, stderr = run_json("-m", "identity", "--data", str(dataset))
    assert code == 1
    assert summary["images_scored"] == 6 and rows_by_key(summary)["identity"]["images"] == 6
    assert len(summary["problems"]) == 2
    assert "size mismatch" in stderr and "bad/small.png" in stderr
    assert "corrupt.png" in stderr and "2 bad pair(s)" in stderr


def test_unknown_model_and_missing_data_are_one_line_errors(dataset: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.safetensors")
    result = runner.invoke(app, ["eval", "-m", missing, "--data", str(dataset)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "nope.safetensors" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["eval", "-m", "identity"])
    assert result.exit_code == 2 and "--benchmark" in result.stderr


def test_no_model_means_the_default_pretrained_one(dataset: Path, tmp_path: Path, monkeypatch):
    from tests._weights_helpers import write_manifest

    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(write_manifest(tmp_path / "e.toml", [])))
    result = runner.invoke(app, ["eval", "--data", str(dataset)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--model" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_benchmark_is_built_once_from_a_photo_folder(tmp_path: Path, monkeypatch) -> None:
    photos = tmp_path / "photos"
    for i in range(3):
        write_image(photos / f"p{i}.png", ImageData(natural_image(72, 88 + 8 * i, seed=10 + i)))
    monkeypatch.setenv("DEBLURCLI_CACHE", str(tmp_path / "cache"))
    args = ["--benchmark", "--benchmark-photos", str(photos), "-m", "identity", "-m", "wiener"]
    code, summary, _ = run_json(*args)
    assert code == 0, summary
    built = list((tmp_path / "cache" / "benchmark").iterdir())
    assert len(built) == 1 and built[0].name.startswith("v1-")
    assert summary["images_scored"] == 9  # three photos × three families
    rows = rows_by_key(summary)
    assert set(rows["blurry"]["families"]) == {"gaussian", "motion", "noisy"}
    assert rows["wiener"]["psnr_gain"] > 0
    blurred = read_image(built[0] / "blurred" / "gaussian" / "p0.png").pixels
    assert blurred.shape == (72, 72, 3)  # largest centred square of a small photo
    stamp = (built[0] / "manifest.jsonl").stat().st_mtime_ns
    code, again, _ = run_json(*args)
    assert code == 0 and again["rows"][0] == summary["rows"][0]
    assert rows_by_key(again)["wiener"]["psnr"] == rows["wiener"]["psnr"]
    assert (built[0] / "manifest.jsonl").stat().st_mtime_ns == stamp  # cached, not rebuilt


def test_opt_in_camera_family_keeps_the_default_families_pairs(tmp_path: Path, monkeypatch):
    from deblurcli.degradations import degrade, image_seed
    from deblurcli.evaluation.benchmark import SEED

    photos = tmp_path / "photos"
    for i in range(2):
        write_image(photos / f"p{i}.png", ImageData(natural_image(64, 80, seed=30 + i)))
    monkeypatch.setenv("DEBLURCLI_CACHE", str(tmp_path / "cache"))
    base = ["--benchmark", "--benchmark-photos", str(photos), "-m", "identity"]
    code, default, _ = run_json(*base)
    assert code == 0 and set(rows_by_key(default)["blurry"]["families"]) == {
        "gaussian", "motion", "noisy"
    }  # fmt: skip
    args = [*base, "--benchmark-family", "camera", "--benchmark-family", "gaussian"]
    code, summary, _ = run_json(*args)
    assert code == 0 and summary["images_scored"] == 4
    assert set(rows_by_key(summary)["blurry"]["families"]) == {"gaussian", "camera"}
    built = (tmp_path / "cache" / "benchmark").iterdir()
    first, second = sorted(
        built,
        key=lambda d: "camera" in json.loads(d.joinpath("benchmark.json").read_text())["rule"],
    )
    # A family's pairs do not depend on the families built with it.
    for name in ("blurred/gaussian/p0.png", "sharp/gaussian/p1.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    sharp = read_image(second / "sharp" / "camera" / "p1.png").pixels
    seed = image_seed(SEED, "camera/p1.png")
    expected = degrade(sharp, "camera", np.random.default_rng(seed)).image
    got = read_image(second / "blurred" / "camera" / "p1.png").pixels
    assert np.abs(got - np.round(np.clip(expected, 0, 1) * 255) / 255).max() < 1e-6
    record = [json.loads(r) for r in (second / "manifest.jsonl").read_text().splitlines()]
    assert {r["family"] for r in record} == {"gaussian", "camera"}


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--benchmark", "--benchmark-family", "sharpish"], "--benchmark-family sharpish"),
        (["--data", ".", "--benchmark-family", "camera"], "need --benchmark"),
    ],
)
def test_benchmark_family_misuse_is_one_line(args: list[str], flag: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "-m", "identity", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert flag in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_two_folders_grayscale_and_limit(tmp_path: Path) -> None:
    for i in range(3):
        sharp = natural_image(40, 44, seed=20 + i).mean(axis=2, keepdims=True)
        blurred = convolve(sharp[..., 0], _kernel("gaussian", 1), mode="reflect")[..., None]
        write_image(tmp_path / "gt" / f"g{i}.png", ImageData(sharp))
        write_image(tmp_path / "in" / f"g{i}.png", ImageData(np.clip(blurred, 0, 1)))
    args = ["-m", "identity", "-m", "wiener", "--sharp", str(tmp_path / "gt")]
    code, summary, stderr = run_json(*args, "--blurred", str(tmp_path / "in"), "--limit", "2")
    assert code == 0 and summary["images_scored"] == 2
    a = read_image(tmp_path / "gt" / "g0.png").pixels[..., 0].astype(np.float64)
    b = read_image(tmp_path / "in" / "g0.png").pixels[..., 0].astype(np.float64)
    a1 = read_image(tmp_path / "gt" / "g1.png").pixels[..., 0].astype(np.float64)
    b1 = read_image(tmp_path / "in" / "g1.png").pixels[..., 0].astype(np.float64)
    expected = np.mean([peak_signal_noise_ratio(x, y, data_range=1) for x, y in [(a, b), (a1, b1)]])
    rows = rows_by_key(summary)
    assert rows["blurry"]["psnr"] == pytest.approx(expected, abs=1e-6)
    # no 'deblur blur' layout, so no kernels: the non-blind row says so and changes nothing
    assert rows["wiener"]["note"].startswith("true kernel known for 0 of 2")
    assert summary["notes"] == [
        "wiener: no true blur kernels in this dataset, so it returned the input"
    ]
    assert rows["wiener"]["psnr"] == rows["blurry"]["psnr"]


def test_model_all_scores_every_available_pretrained_model(
    dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    from tests._weights_helpers import entry_for, tiny_checkpoint, write_manifest

    _, a = tiny_checkpoint(tmp_path / "pretrained" / "a.safetensors", arch="simplecnn")
    _, b = tiny_checkpoint(tmp_path / "pretrained" / "b.safetensors", arch="skipae")
    entries = [
        entry_for("simplecnn.tiny", a, "a.safetensors", shipped=True),
        entry_for("skipae.tiny", b, "b.safetensors", shipped=True),
        entry_for("edgenet.later", b"x" * 10, "c.safetensors"),  # neither shipped nor published
    ]
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(write_manifest(tmp_path / "m.toml", entries)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, summary, stderr = run_json("-m", "all", "-m", "identity", "--data", str(dataset))
    assert code == 0
    keys = [r["key"] for r in summary["rows"]]
    assert keys == ["blurry", "simplecnn.tiny", "skipae.tiny", "identity"]
    assert "edgenet.later" in stderr  # skipped with a warning, not fatal for 'all'
    assert all(r["params"] > 0 for r in summary["rows"] if r["kind"] == "model")

    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(write_manifest(tmp_path / "e.toml", [])))
    result = runner.invoke(app, ["eval", "-m", "all", "--data", str(dataset)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no pretrained weights" in result.stderr


def test_tile_and_device_options_reach_the_restore_engine(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "pairs", n=2, size=(101, 130))  # 4 tiles of 64
    ckpt = random_checkpoint(tmp_path / "rand.safetensors")  # simplecnn: no norm layers
    base = ["-m", str(ckpt), "--data", str(dataset), "--device", "cpu"]
    code, whole, _ = run_json(*base, "--tile", "0")
    assert code == 0 and whole["settings"]["tile"] == 0 and whole["settings"]["device"] == "cpu"
    code, tiled, _ = run_json(*base, "--tile", "64", "--tile-overlap", "8")
    assert code == 0 and tiled["settings"]["tile"] == 64
    w, t = whole["rows"][1], tiled["rows"][1]
    assert t["psnr"] == pytest.approx(w["psnr"], abs=0.05) and t["ssim"] == pytest.approx(
        w["ssim"], abs=1e-3
    )
    for bad in (["--tile", "big"], ["--tile", "24"], ["--device", "tpu9"]):
        result = runner.invoke(app, ["eval", *base[:4], *bad])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_benchmark_defaults_to_the_held_out_val_photos(tmp_path: Path, monkeypatch) -> None:
    pool = tmp_path / "pool"
    write_image(pool / "prepared" / "val" / "v.png", ImageData(natural_image(48, 48, seed=1)))
    write_image(pool / "prepared" / "train" / "t.png", ImageData(natural_image(48, 48, seed=2)))
    monkeypatch.setenv("DEBLURCLI_DATA", str(pool))
    monkeypatch.setenv("DEBLURCLI_CACHE", str(tmp_path / "cache"))
    code, summary, _ = run_json("--benchmark", "-m", "identity")
    assert code == 0 and summary["images_scored"] == 3
    (built,) = (tmp_path / "cache" / "benchmark").iterdir()
    sources = {json.loads(line)["source"] for line in (built / "manifest.jsonl").open()}
    assert sources == {"v.png"}  # never a training photo

    monkeypatch.setenv("DEBLURCLI_DATA", str(tmp_path / "empty"))
    result = runner.invoke(app, ["eval", "--benchmark", "-m", "identity"])
    assert result.exit_code != 0 and "deblur data" in result.stderr


def test_a_sampled_pair_that_is_bad_passes_its_turn_to_the_next(dataset: Path) -> None:
    from deblurcli.evaluation import EvalOptions, evaluate

    # sorts first, so it is the pair the grid would show first
    write_image(dataset / "sharp" / "a_bad" / "x.png", ImageData(natural_image(30, 30)))
    write_image(dataset / "blurred" / "a_bad" / "x.png", ImageData(natural_image(32, 30)))
    result = evaluate(["identity"], dataset, options=EvalOptions(sample=2))
    assert len(result.problems) == 1 and len({s.image for s in result.images}) == 6
    assert [s.name for s in result.samples] == ["gaussian/img0.png", "motion/img5.png"]
    assert result.rows[1].mp_per_s is not None


def test_unusable_report_folder_is_one_line_before_scoring(dataset: Path, tmp_path: Path) -> None:
    from deblurcli.errors import DeblurError
    from deblurcli.evaluation import evaluate
    from deblurcli.evaluation.report import CSV_NAME, write_report

    taken = tmp_path / "a_file"
    taken.write_text("not a folder")
    result = runner.invoke(
        app, ["eval", "-m", "identity", "--data", str(dataset), "--report", str(taken)]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "a_file" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "deblur eval" not in result.stdout  # failed before scoring: no table printed
    blocked = tmp_path / "report"
    (blocked / CSV_NAME).mkdir(parents=True)  # a folder where the CSV belongs
    with pytest.raises(DeblurError, match="cannot write the report"):
        write_report(evaluate(["identity"], dataset), blocked)


def test_unusable_benchmark_cache_is_one_line(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image(photos / "p.png", ImageData(natural_image(40, 40)))
    taken = tmp_path / "a_file"
    taken.write_text("not a folder")
    args = ["--benchmark", "--benchmark-photos", str(photos), "--benchmark-dir", str(taken)]
    result = runner.invoke(app, ["eval", "-m", "identity", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--benchmark-dir" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_scores_of_an_mps_run_are_computed_in_float64_on_the_cpu() -> None:
    from deblurcli.evaluation import EvalOptions
    from deblurcli.evaluation.runner import _Scorer

    score = _Scorer(EvalOptions(), torch.device("mps"))  # MPS has no float64
    a = torch.from_numpy(natural_image(24, 24).transpose(2, 0, 1).copy())[None]
    p, s = score(a * 0.9, a, gray=False)
    ref, out = (t[0].permute(1, 2, 0).double().numpy() for t in (a, a * 0.9))
    assert p == pytest.approx(peak_signal_noise_ratio(ref, out, data_range=1), abs=1e-9)
    assert 0 < s < 1


@pytest.mark.parametrize("bad", [np.zeros((9, 9)), np.ones((3, 9, 9)), np.full((9, 9), np.nan)])
def test_a_bad_kernel_file_leaves_wiener_passing_the_input_through(
    dataset: Path, bad: np.ndarray
) -> None:
    from deblurcli.evaluation import evaluate

    np.save(dataset / "kernels" / "gaussian" / "img0.png.npy", bad)
    result = evaluate(["wiener"], dataset)
    scores = {(s.image, s.model): s for s in result.images}
    assert scores["gaussian/img0.png", "wiener"].psnr == scores["gaussian/img0.png", "blurry"].psnr
    assert all(np.isfinite(s.psnr) for s in result.images)
    assert result.rows[1].note == "true kernel known for 5 of 6 images"


def test_unknown_precision_is_refused_even_with_baselines_only(dataset: Path) -> None:
    result = runner.invoke(
        app, ["eval", "-m", "unsharp", "--data", str(dataset), "--precision", "fp8"]
    )
    assert result.exit_code == 2 and "unknown precision 'fp8'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
