"""The pretrained pipeline (deblurcli.pretraining, scripts/train_pretrained.py): the plan,
the training commands, the shipping rule, and real tiny runs end to end."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio

from deblurcli.archs import count_parameters, create, get_spec, list_archs, resolve_config
from deblurcli.degradations import KINDS
from deblurcli.imageio import ImageData, find_images, read_image, write_image
from deblurcli.inference.device import cpu_bf16_native
from deblurcli.pretraining.cohort_run import first_stage, warm_start
from deblurcli.pretraining.commands import read_result, run_lock, run_logged, shown
from deblurcli.pretraining.describe import dataset_text
from deblurcli.pretraining.pipeline import (
    MAX_FILE_BYTES,
    MAX_TOTAL_BYTES,
    Options,
    Paths,
    check_same_model,
    run_all,
    train_command,
)
from deblurcli.pretraining.plan import PlanError, load_cohort, load_plan
from deblurcli.pretraining.scores import beats_shipped, comparison_row, comparison_table
from deblurcli.weights import default_model_name, load_model
from deblurcli.weights.checkpoint import (
    ARCH_KEY,
    CONFIG_KEY,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from deblurcli.weights.manifest import (
    CPU_BF16_MAX_DB,
    MANIFEST_PATH,
    format_manifest,
    load_manifest,
    split_manifest_text,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "train_pretrained.py"
PLAN = REPO / "scripts" / "pretrained_plan.toml"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plan_covers_every_arch_with_valid_shippable_configs():
    plans = load_plan(PLAN)
    assert set(plans) == set(list_archs())
    total = 0
    for arch, plan in plans.items():
        resolve_config(arch, **plan["config"])  # every key exists in the arch
        with torch.device("meta"):
            params = count_parameters(create(arch, **plan["config"]))
        assert params * 2 <= MAX_FILE_BYTES, arch  # fp16 file under 30 MB
        total += params * 2
        assert plan["steps"] > 0 and plan["patch_size"] % 32 == 0
    assert total <= MAX_TOTAL_BYTES
    assert plans["simplecnn"]["default_model"] in {"best", *plans}


def test_plan_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "plan.toml"
    bad.write_text("[defaults]\nsteps_typo = 3\n[arch.simplecnn]\nsteps = 1\n")
    with pytest.raises(PlanError, match="steps_typo"):
        load_plan(bad)


def _empty_manifest(path: Path) -> Path:
    """The bundled manifest's comments and schema, without its models."""
    head, _ = split_manifest_text(MANIFEST_PATH.read_text(encoding="utf-8"))
    path.write_text(format_manifest(head, [], None), encoding="utf-8")
    return path


def _photo_pool(root: Path) -> tuple[Path, Path, Path]:
    """Two train photos, two val photos and two 'independent' photos, as real PNG files."""
    photos = {
        "train": [skdata.astronaut(), skdata.chelsea()],
        "val": [skdata.coffee(), skdata.rocket()],
        "check": [skdata.astronaut()[200:, 150:], skdata.coffee()[100:, 200:]],
    }
    for split, images in photos.items():
        for i, pixels in enumerate(images):
            small = pixels[::4, ::4][:72, :96].astype(np.float32) / 255.0
            write_image(root / split / f"photo{i}.png", ImageData(small, bit_depth=8))
    return root / "train", root / "val", root / "check"


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # An empty torch hub: no VGG19 weights, whatever this machine has cached.
    env = {**os.environ, "DEBLURCLI_CACHE": str(tmp_path / "cache")}
    env["TORCH_HOME"] = str(tmp_path / "torch")
    env["PYTHONPATH"] = str(REPO)  # this checkout's package, whatever is installed
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


@pytest.mark.skipif(
    _missing("deblurcli.training") or _missing("deblurcli.evaluation"),
    reason="needs deblur train (issue #6) and deblur eval (issue #7)",
)
def test_driver_trains_resumes_exports_evaluates_and_registers(tmp_path):
    train, val, check = _photo_pool(tmp_path / "pool")
    # --sandbox would copy the real one (six models) here; start from none to see the entry
    manifest = _empty_manifest(tmp_path / "weights_manifest.toml")
    real_manifest = _sha256(MANIFEST_PATH)
    common = ["--arch", "simplecnn", "--width", "tiny", "--jobs", "1", "--sandbox", str(tmp_path)]
    common += ["--benchmark-dir", str(tmp_path / "bench")]
    common += ["--train-photos", str(train), "--val-photos", str(val)]
    common += ["--check-photos", str(check), "--speed-size", "64x48", "--speed-threads", "1"]

    first = _run([*common, "--steps", "1", "--train-only"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "simplecnn" not in load_manifest(manifest).names()  # --train-only registers nothing
    # A longer budget continues the same run (deblur train --resume), not a fresh one.
    second = _run([*common, "--steps", "2"], tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    run = tmp_path / "runs" / "simplecnn"
    log = (run / "pipeline.log").read_text(encoding="utf-8")
    assert "--steps 2" in log and "--resume" in log
    assert json.loads((run / "train_result.json").read_text())["step"] == 2

    entry = load_manifest(manifest).entries[0]
    shipped = manifest.parent / "pretrained" / "simplecnn.safetensors"
    assert entry.name == "simplecnn" and entry.file == shipped.name and entry.shipped
    assert default_model_name(manifest) == "simplecnn"  # the plan's "best": the only one here
    assert entry.sha256 == _sha256(shipped) and entry.size == shipped.stat().st_size
    assert entry.recipe.startswith("deblur train --arch simplecnn") and "--steps 2" in entry.recipe
    assert "2 photos: photo0, photo1" in entry.dataset
    with safe_open(str(shipped), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
    model = load_model("simplecnn", manifest=manifest)
    assert model.arch_config == resolve_config("simplecnn", widths=[8] * 6)

    # The blurry-input score is the benchmark pairs' PSNR, as scikit-image computes it.
    bench = [p for p in (tmp_path / "bench").iterdir() if p.is_dir()]
    expected = {}
    for folder in bench:
        info = json.loads((folder / "benchmark.json").read_text())
        camera = "camera" in info["rule"]  # the opt-in family, scored apart
        source = Path(info["source"]).name + ("_camera" if camera else "")
        values = [
            peak_signal_noise_ratio(
                read_image(s).pixels,
                read_image(folder / "blurred" / s.relative_to(folder / "sharp")).pixels,
                data_range=1.0,
            )
            for s in find_images(folder / "sharp")
        ]
        expected[source] = float(np.mean(values))
    assert entry.scores["blurry_psnr"] == pytest.approx(expected["val"], abs=1e-3)
    assert entry.scores["check_blurry_psnr"] == pytest.approx(expected["check"], abs=1e-3)
    for family in ("gaussian", "motion", "noisy"):
        assert f"{family}_psnr_gain" in entry.scores
    for prefix, photos in (("", "val"), ("check_", "check")):
        psnr, gain = (entry.scores[f"{prefix}camera_{k}"] for k in ("psnr", "psnr_gain"))
        assert psnr - gain == pytest.approx(expected[f"{photos}_camera"], abs=1e-3)
    assert entry.scores["restore_mp_per_s"] > 0
    _assert_cpu_bf16_measured(entry, model, val, tmp_path, second.stdout)

    card = (tmp_path / "docs" / "simplecnn.md").read_text(encoding="utf-8")
    assert entry.sha256 in card and entry.recipe in card and "Independent check" in card
    assert "Camera-like blur" in card and "On the check photos:" in card
    assert "The default model" in card and "beats unsharp on motion (default)" in card
    assert "MP/s at 64×48" in card
    assert "python scripts/train_pretrained.py --arch simplecnn" in card  # the plan's model
    # The recipe the run really used: the plan's lr 5e-4 cosine, VGG19 missing offline.
    assert "lr 0.0005 cosine" in card and "no VGG19 weights: perceptual term dropped" in card
    strip = read_image(tmp_path / "docs" / "simplecnn.png").pixels
    assert strip.shape[1] == 3 * strip.shape[0] + 8
    summary = (tmp_path / "runs" / "summary.md").read_text(encoding="utf-8")
    assert f"simplecnn (default) | {entry.scores['psnr']:.2f}" in summary
    assert _sha256(MANIFEST_PATH) == real_manifest  # the real manifest is never touched


def _assert_cpu_bf16_measured(entry, model, val: Path, tmp_path: Path, out: str) -> None:
    """The entry's bf16 delta is what ``deblur eval --benchmark --precision bf16`` measures
    against the entry's fp32 benchmark PSNR; the loaded model carries the verdict."""
    if not cpu_bf16_native():  # the driver cannot measure here (the other branch's test)
        assert entry.cpu_bf16 is None and "[simplecnn] cpu_bf16 left out" in out
        return
    report = tmp_path / "bf16_report"
    weights = tmp_path / "pretrained" / "simplecnn.safetensors"
    args = ["eval", "--benchmark", "--benchmark-photos", str(val), "--benchmark-dir"]
    args += [str(tmp_path / "bench"), "--model", str(weights), "--precision", "bf16"]
    proc = subprocess.run(
        [sys.executable, "-m", "deblurcli", *args, "--report", str(report)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    bf16_psnr = next(r for r in summary["rows"] if r["kind"] == "model")["psnr"]
    assert summary["settings"]["precision"] == "bf16"
    # scores' psnr is rounded to 4 places, the delta computed before rounding
    assert entry.cpu_bf16_psnr_delta == pytest.approx(bf16_psnr - entry.scores["psnr"], abs=2e-4)
    assert entry.cpu_bf16 is (abs(entry.cpu_bf16_psnr_delta) <= CPU_BF16_MAX_DB)
    assert model.cpu_bf16 is entry.cpu_bf16  # what --precision auto follows


def _make_example_module():
    path = REPO / "scripts" / "make_example.py"
    spec = importlib.util.spec_from_file_location("make_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_example_is_a_reproducible_motion_blurred_crop(tmp_path):
    me = _make_example_module()
    photo = tmp_path / "photos" / me.PHOTO
    rng = np.random.default_rng(1)
    write_image(photo, ImageData(rng.random((640, 810, 3), dtype=np.float32), bit_depth=8))
    me.make_example(photo, tmp_path / "a")
    me.make_example(photo, tmp_path / "b")
    assert (tmp_path / "a" / "blurry.png").read_bytes() == (
        tmp_path / "b" / "blurry.png"
    ).read_bytes()
    blurry = read_image(tmp_path / "a" / "blurry.png").pixels
    sharp = read_image(tmp_path / "a" / "sharp.png").pixels
    left, top, w, h = me.BOX
    assert blurry.shape == sharp.shape == (h, w, 3)
    np.testing.assert_allclose(sharp, read_image(photo).pixels[top : top + h, left : left + w])
    # Blur removes most of white noise's energy: the crop is far from its sharp target.
    assert peak_signal_noise_ratio(sharp, blurry, data_range=1.0) < 15
    assert np.abs(np.diff(blurry, axis=1)).mean() < 0.5 * np.abs(np.diff(sharp, axis=1)).mean()


def test_committed_example_matches_the_script(tmp_path):
    me = _make_example_module()
    try:
        from deblurcli.data.photo_pool import split_dir

        photo = split_dir("val") / me.PHOTO
    except Exception:  # the photo pool is not fetched on this machine
        pytest.skip("photo pool not prepared (deblur data fetch && deblur data prepare)")
    if not photo.is_file():
        pytest.skip("photo pool not prepared")
    me.make_example(photo, tmp_path)
    committed = REPO / "examples" / "blurry.png"
    assert (tmp_path / "blurry.png").read_bytes() == committed.read_bytes()


def test_resume_refuses_a_run_whose_model_the_plan_changed(tmp_path):
    plan = load_plan(PLAN)["resnetencdec"]
    saved = resolve_config("resnetencdec", **plan["config"])
    (tmp_path / "config.json").write_text(json.dumps({"arch_config": saved}))
    check_same_model("resnetencdec", plan, tmp_path, "default")  # same model: fine
    changed = {**plan, "config": {**plan["config"], "encoder": "resnet34"}}
    with pytest.raises(RuntimeError, match="remove the run folder"):
        check_same_model("resnetencdec", changed, tmp_path, "default")


def test_a_run_being_trained_is_locked_for_the_trainer_lifetime(tmp_path):
    with run_lock(tmp_path) as fd:
        with (
            pytest.raises(RuntimeError, match="being trained by another process"),
            run_lock(tmp_path),
        ):
            pass
        # A child that inherited the lock keeps it after the driver lets go of its copy.
        child = subprocess.Popen(["sleep", "5"], pass_fds=(fd,))
    try:
        with pytest.raises(RuntimeError, match="another process"), run_lock(tmp_path):
            pass
    finally:
        child.kill()
        child.wait()
    with run_lock(tmp_path):
        pass


def test_train_command_carries_the_plan(tmp_path):
    plan = {**load_plan(PLAN)["deblurgan"], "vgg_weights": "~/vgg19.pth", "lr": 2e-4}
    plan["schedule"] = "cosine"
    paths = Paths(
        runs=tmp_path / "runs",
        pretrained=tmp_path,
        manifest=tmp_path / "m.toml",
        docs=tmp_path,
        train_photos=tmp_path / "train",
        val_photos=tmp_path / "val",
    )
    cmd = shown(train_command("deblurgan", plan, paths, "default"))
    assert cmd.startswith(f"deblur train --arch deblurgan --data {tmp_path / 'train'}")
    for part in ("--degrade mix", "--no-adversarial", "--lr 0.0002", "--schedule cosine"):
        assert part in cmd
    assert "--config ngf=32" in cmd
    assert f"--vgg-weights {Path('~/vgg19.pth').expanduser()}" in cmd
    assert f"--steps {plan['steps']} " in cmd and "--resume" not in cmd
    tiny = shown(train_command("deblurgan", plan, paths, "tiny"))
    assert "--width tiny" in tiny and "--config" not in tiny
    plan["degrade_options"] = {"mix_noise_prob": 0, "gaussian_sigma": [1, 3]}
    cmd = shown(train_command("deblurgan", plan, paths, "default"))
    assert "--degrade-option mix_noise_prob=0 --degrade-option 'gaussian_sigma=[1,3]'" in cmd
    (tmp_path / "train").mkdir()
    text = dataset_text(tmp_path / "train", 128, "mix", plan["degrade_options"])
    assert text.endswith(
        "(--degrade mix --degrade-option mix_noise_prob=0 --degrade-option gaussian_sigma=[1,3])"
    )


def _cohort_bundle(tmp_path: Path, train: Path) -> Path:
    """A bundle as a cohort run packs it: one really trained tiny simplecnn and its figures."""
    from deblurcli.training.trainer import TrainConfig
    from deblurcli.training.trainer import train as run_training
    from deblurcli.weights.bundle import write_bundle

    run = tmp_path / "gpu_run" / "simplecnn"
    run_training(
        TrainConfig(
            arch="simplecnn",
            out=run,
            data=train,
            degrade="gaussian",
            patch_size=32,
            batch_size=2,
            steps=1,
            width="tiny",
            val_every=1,
            ckpt_every=1,
        )
    )
    figures = {
        "step": 1,
        "patches": 2,
        "patches_per_s": 123.4,
        "best_psnr": 20.0,
        "precision": "bf16",
        "device": "cuda:0",
        "init": None,
        "error": None,
        "config_json": json.loads((run / "config.json").read_text()),
    }
    bundle = tmp_path / "bundle"
    write_bundle(
        {"simplecnn": run / "model.safetensors"},
        bundle,
        extra={
            "command": "python scripts/train_pretrained.py --minutes 8",
            "figures": {"simplecnn": figures},
        },
    )
    return bundle


def test_from_bundle_ships_only_a_model_that_beats_the_shipped_one(tmp_path):
    train, val, check = _photo_pool(tmp_path / "pool")
    bundle = _cohort_bundle(tmp_path, train)
    manifest = _empty_manifest(tmp_path / "weights_manifest.toml")
    args = ["--from-bundle", str(bundle), "--width", "tiny", "--jobs", "1"]
    args += ["--sandbox", str(tmp_path), "--benchmark-dir", str(tmp_path / "bench")]
    args += ["--train-photos", str(train), "--val-photos", str(val)]
    args += ["--check-photos", str(check), "--speed-size", "none"]

    shipped = _run(args, tmp_path)  # nothing shipped yet: the bundle's model is the best
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    entry = load_manifest(manifest).entries[0]
    weights = manifest.parent / "pretrained" / "simplecnn.safetensors"
    assert entry.sha256 == _sha256(weights)
    assert "trained on cuda:0 for 1 steps" in entry.description
    assert entry.recipe == "python scripts/train_pretrained.py --minutes 8"
    assert (tmp_path / "docs" / "simplecnn.png").is_file()
    report = tmp_path / "runs" / "bundle_report.md"
    assert "| simplecnn |" in report.read_text(encoding="utf-8")
    assert report.read_text(encoding="utf-8").count("| shipped |") == 1
    if cpu_bf16_native():  # a shipped cohort model gets its bf16 verdict too
        assert entry.cpu_bf16 is (abs(entry.cpu_bf16_psnr_delta) <= CPU_BF16_MAX_DB)

    # Now the shipped model scores better than anything a one-step model reaches.
    text = manifest.read_text(encoding="utf-8").replace(
        f"psnr_gain = {entry.scores['psnr_gain']!r}", "psnr_gain = 9.0"
    )
    manifest.write_text(text, encoding="utf-8")
    before = (manifest.read_bytes(), weights.read_bytes())
    refused = _run(args, tmp_path)
    assert refused.returncode == 0, refused.stdout + refused.stderr
    assert "[simplecnn] not shipped: psnr_gain" in refused.stdout
    # The refused model's figures are kept, beside the shipped model's.
    row = next(r for r in report.read_text(encoding="utf-8").splitlines() if "simplecnn" in r)
    assert row.endswith("| not shipped |") and "(+9.00)" in row
    assert (manifest.read_bytes(), weights.read_bytes()) == before
    log = (tmp_path / "runs" / "simplecnn" / "pipeline.log").read_text(encoding="utf-8")
    measured = 1 if cpu_bf16_native() else 0  # a model that does not ship is not measured
    assert log.count("--precision bf16 --report") == measured


def _tiny_run(
    out: Path, train: Path, degrade: str, init: Path | None = None, arch: str = "simplecnn"
) -> Path:
    from deblurcli.training.trainer import TrainConfig
    from deblurcli.training.trainer import train as run_training

    config = TrainConfig(
        arch=arch,
        out=out,
        data=train,
        degrade=degrade,
        patch_size=32,
        batch_size=2,
        steps=2 if init is None else 1,
        width="tiny" if init is None else "default",  # with init: the init's config
        val_every=1,
        ckpt_every=1,
        init=None if init is None else str(init),
    )
    run_training(config)
    return out


def test_from_run_ships_a_two_stage_run_with_both_commands(tmp_path):
    train, val, check = _photo_pool(tmp_path / "pool")
    first = _tiny_run(tmp_path / "abl" / "gaussian", train, "gaussian")
    second = tmp_path / "abl" / "mix"
    _tiny_run(second, train, "mix", init=first / "model.safetensors")
    other = tmp_path / "abl" / "transformnet"  # two models at once: each ships once
    _tiny_run(other, train, "motion", arch="transformnet")
    manifest = _empty_manifest(tmp_path / "weights_manifest.toml")
    args = ["--from-run", f"simplecnn={second}", "--from-run", f"transformnet={other}"]
    args += ["--width", "tiny", "--jobs", "1"]
    args += ["--sandbox", str(tmp_path), "--benchmark-dir", str(tmp_path / "bench")]
    args += ["--train-photos", str(train), "--val-photos", str(val)]
    args += ["--check-photos", str(check), "--speed-size", "none"]

    shipped = _run(args, tmp_path)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert shipped.stdout.count("| model | benchmark |") == 1  # one report
    entries = {e.name: e for e in load_manifest(manifest).entries}
    entry, single = entries["simplecnn"], entries["transformnet"]
    weights = manifest.parent / "pretrained" / "simplecnn.safetensors"
    assert entry.sha256 == _sha256(weights)
    assert single.recipe.count("deblur train") == 1
    assert "trained on CPU for 3 steps" in entry.description  # 2 + 1, both stages
    stage1, stage2 = entry.recipe.split(" && ")
    assert stage1.startswith("deblur train --arch simplecnn") and "--degrade gaussian" in stage1
    assert "--steps 2 " in stage1 and "--init" not in stage1
    assert "--degrade mix" in stage2 and f"--init {first / 'model.safetensors'}" in stage2
    assert entry.dataset.endswith(
        "random 32 px crops blurred on the fly (--degrade gaussian); "
        "then random 32 px crops blurred on the fly (--degrade mix)"
    )
    source = load_checkpoint(second / "model.safetensors").state_dict()
    export = load_checkpoint(weights).state_dict()
    assert all(torch.equal(export[k], v.half().float()) for k, v in source.items())
    report = (tmp_path / "runs" / "bundle_report.md").read_text(encoding="utf-8")
    assert report.count("| shipped |") == 2
    card = (tmp_path / "docs" / "simplecnn.md").read_text(encoding="utf-8")
    assert entry.recipe in card and "train_pretrained.py --arch" not in card  # not the plan's
    assert f"initialised from: `{first / 'model.safetensors'}`" in card

    # The first stage's model changed after the second started from it: refused, one line.
    save_checkpoint(
        create("simplecnn", **get_spec("simplecnn").tiny_config), first / "model.safetensors"
    )
    changed = _run(args, tmp_path)
    assert changed.returncode != 0 and "Traceback" not in changed.stderr
    assert "changed after" in changed.stderr.strip().splitlines()[-1]
    missing = _run([*args[:1], f"simplecnn={tmp_path / 'nothing'}", *args[2:]], tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "--from-run: run folder" in missing.stderr


def test_from_run_needs_arch_equals_folder(tmp_path):
    wrong = _run(["--from-run", str(tmp_path)], tmp_path)
    assert wrong.returncode == 2 and "expected ARCH=RUN_FOLDER" in wrong.stderr


def test_beats_shipped_needs_both_benchmark_and_check_photos():
    better = {"psnr_gain": 1.0, "check_psnr_gain": 0.5}
    assert beats_shipped(better, {"psnr_gain": 0.3, "check_psnr_gain": 0.2}) == []
    assert beats_shipped(better, {}) == []  # nothing shipped yet
    worse_check = beats_shipped(better, {"psnr_gain": 0.3, "check_psnr_gain": 0.6})
    assert len(worse_check) == 1 and worse_check[0].startswith("check_psnr_gain")
    # A thousandth of a dB (what two fine-tuning steps moved edgenet) is noise, not better.
    noise = beats_shipped({"psnr_gain": 0.3697}, {"psnr_gain": 0.3691})
    assert len(noise) == 1 and "0.05 dB above" in noise[0]


def test_comparison_row_puts_each_gain_beside_the_shipped_one():
    new = {"psnr_gain": 0.105, "check_psnr_gain": 0.313, "camera_psnr_gain": 0.3}
    row = comparison_row("simplecnn", new, {"psnr_gain": 0.101}, "3275 steps", "not shipped")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["simplecnn", "+0.10 (+0.10)", "+0.31 (-)"]
    assert "+0.30 (-)" in cells and cells[-2:] == ["3275 steps", "not shipped"]
    table = comparison_table([row])
    assert table.splitlines()[0].count("|") == len(cells) + 1 and row in table


def test_every_planned_model_warm_starts_from_its_shipped_weights():
    """The GPU run continues from the shipped weights; a plan config that drifts from the
    shipped one would silently train that arch from scratch instead."""
    cohort = load_cohort(PLAN)
    assert {"patch_size", "batch_size", "workers", "warmup"} <= set(cohort)
    kind, share = first_stage(cohort)  # a curriculum: another blur before the mix
    assert kind in KINDS and kind != load_plan(PLAN)["edgenet"]["degrade"] and 0 < share < 1
    assert first_stage({}) is None and first_stage({"first_degrade": "gaussian"}) is None
    for arch, plan in load_plan(PLAN).items():
        assert warm_start(arch, plan, "default", MANIFEST_PATH) == arch
        assert warm_start(arch, plan, "tiny", MANIFEST_PATH) is None
    simplecnn = load_plan(PLAN)["simplecnn"]
    narrower = {**simplecnn, "config": {**simplecnn["config"], "widths": [8] * 6}}
    assert warm_start("simplecnn", narrower, "default", MANIFEST_PATH) is None


def test_command_results_are_read_from_the_files_they_write(tmp_path):
    # The output of a worker goes to its log only; the result is the file it wrote.
    log = tmp_path / "run" / "pipeline.log"
    script = "import json,sys; print('{\"step\": 1}'); open(sys.argv[1],'w').write('{\"step\": 2}')"
    proc = run_logged([sys.executable, "-c", script, str(tmp_path / "r.json")], log, threads=1)
    assert proc.returncode == 0 and proc.stdout is None
    assert '{"step": 1}' in log.read_text() and log.read_text().startswith("\n$ ")
    assert read_result(tmp_path / "r.json", "deblur train") == {"step": 2}
    with pytest.raises(RuntimeError, match="deblur eval left no readable result at"):
        read_result(tmp_path / "missing.json", "deblur eval")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(RuntimeError, match="does not hold a JSON object"):
        read_result(tmp_path / "list.json", "deblur eval")


def test_without_native_bf16_the_keys_stay_only_for_unchanged_weights(
    tmp_path, monkeypatch, capsys
):
    # cpu_bf16_native probes the hardware: this CPU is made one that cannot measure bf16.
    monkeypatch.setattr("deblurcli.pretraining.pipeline.cpu_bf16_native", lambda: False)
    train, val, _ = _photo_pool(tmp_path / "pool")
    manifest = _empty_manifest(tmp_path / "weights_manifest.toml")
    paths = Paths(
        train_photos=train,
        val_photos=val,
        runs=tmp_path / "runs",
        pretrained=tmp_path / "pretrained",
        manifest=manifest,
        docs=tmp_path / "docs",
        benchmark_cache=tmp_path / "bench",
    )
    options = Options(width="tiny", jobs=1, speed_size=None)

    def ship(steps: int) -> tuple[object, str]:
        plan = {**load_plan(PLAN)["simplecnn"], "steps": steps, "threads": 1}
        assert run_all({"simplecnn": plan}, paths, options) == 0
        return load_manifest(manifest).entries[0], capsys.readouterr().out

    first, out = ship(1)  # new weights, nothing measured before: no keys, and one line says so
    assert first.cpu_bf16 is None and first.cpu_bf16_psnr_delta is None
    assert "[simplecnn] cpu_bf16 left out: this CPU has no native bf16" in out
    # As if measured on a CPU with native bf16; the entry is re-scored from the same weights.
    text = manifest.read_text(encoding="utf-8").replace(
        "shipped = true\n", "shipped = true\ncpu_bf16 = true\ncpu_bf16_psnr_delta = -0.0012\n"
    )
    manifest.write_text(text, encoding="utf-8")
    same, out = ship(1)
    assert same.sha256 == first.sha256 and "cpu_bf16" not in out
    assert (same.cpu_bf16, same.cpu_bf16_psnr_delta) == (True, -0.0012)
    # The run's best model changes (as when training on finds a better one): new weights.
    best = tmp_path / "runs" / "simplecnn" / "model.safetensors"
    model = load_checkpoint(best)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    meta = {k: v for k, v in read_metadata(best).items() if k not in (ARCH_KEY, CONFIG_KEY)}
    save_checkpoint(model, best, metadata=meta)
    changed, out = ship(1)
    assert changed.sha256 != first.sha256
    assert changed.cpu_bf16 is None and changed.cpu_bf16_psnr_delta is None
    assert "[simplecnn] cpu_bf16 left out" in out
    assert load_model("simplecnn", manifest=manifest).cpu_bf16 is None  # fp32 under auto


def _run_folder(folder: Path, batch_size: int, steps: int, rate: float, init: Path | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(folder.name.encode())
    config = {"arch": "simplecnn", "batch_size": batch_size, "patch_size": 64, "data": None}
    saved = {"config": config}
    if init is not None:
        saved["init"] = {"file": str(init), "sha256": _sha256(init)}
    (folder / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    result = {"step": steps, "patches_per_s": rate, "best_psnr": 30.0, "precision": "fp32"}
    (folder / "result.json").write_text(json.dumps(result), encoding="utf-8")
    return folder


def test_from_run_rate_is_over_the_whole_chain(tmp_path):
    from deblurcli.pretraining.from_run import run_results

    # 800 patches at 10/s, then a short stage of 640 at 100/s: 1,440 patches in 86.4 s.
    first = _run_folder(tmp_path / "a", 8, 100, 10.0, None)
    second = _run_folder(tmp_path / "b", 64, 10, 100.0, first / "model.safetensors")
    figures = run_results({"simplecnn": second}, tmp_path / "runs")["simplecnn"]
    assert (figures["step"], figures["patches"]) == (110, 1440)
    assert figures["patches_per_s"] == round(1440 / 86.4, 1)
