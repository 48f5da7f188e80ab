"""deblur train: every arch learns, checkpoints load, resume is exact, DDP and bad data work."""

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
from conftest import natural_image

from deblurcli.archs import list_archs
from deblurcli.data import dataset as ds
from deblurcli.errors import UsageError
from deblurcli.imageio import ImageData, write_image
from deblurcli.inference import restore_tensor
from deblurcli.training import TrainConfig, train
from deblurcli.training.batchnorm import batchnorm_layers, recompute_batchnorm_stats
from deblurcli.training.recipes import RECIPES, parse_losses, recipe_for_arch
from deblurcli.training.trainer import Trainer
from deblurcli.weights import read_metadata
from deblurcli.weights.resolve import load_model
from tests._procs import alive, descendants

PATCH = 32


def _write_pairs(root: Path, n: int = 6, size: int = 64) -> Path:
    for i in range(n):
        sharp = natural_image(size, size, seed=i)
        blurred = cv2.GaussianBlur(sharp, (0, 0), 1.5)
        write_image(root / "sharp" / f"im{i}.png", ImageData(sharp))
        write_image(root / "blurred" / f"im{i}.png", ImageData(blurred))
    return root


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(autouse=True)
def _no_vgg_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty torch hub cache: no ImageNet VGG19, whatever the machine has.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


def _config(arch: str, data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        arch=arch,
        out=out,
        data=data,
        width="tiny",
        patch_size=PATCH,
        batch_size=4,
        steps=4,
        val_every=2,
        ckpt_every=2,
        log_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _eval_loss(trainer: Trainer, batch) -> float:
    """Recipe loss without the adversarial term, with the same dropout mask every time."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        learner = trainer.learner
        blurred, sharp = learner.to_device(batch[0]), learner.to_device(batch[1])
        terms = learner.losses(blurred, sharp, trainer.step)
    return sum(float(v) for k, v in terms.items() if k != "adv")


@pytest.mark.parametrize("arch", list_archs())
def test_arch_learns_checkpoints_and_restores(arch: str, pairs: Path, tmp_path: Path) -> None:
    # Over a fixed batch, a few steps must lower the recipe's loss.
    fast = {"batch_size": 2, "n_critic": 1}
    trainer = Trainer(_config(arch, pairs, tmp_path / "fixed", steps=10, lr=5e-4, **fast))
    batch = next(trainer._loader())
    trainer.step = trainer.cfg.steps  # past edgenet's edge-only stage: measure the joint loss
    before = _eval_loss(trainer, batch)
    for _ in range(4):
        trainer.train_step(batch)
    after = _eval_loss(trainer, batch)
    assert after < before, f"{arch}: loss {before:.5f} -> {after:.5f}"

    # A full (short) run writes the checkpoint that load_model and restore use.
    result = train(_config(arch, pairs, tmp_path / "run", steps=2, **fast))
    assert result.step == 2 and np.isfinite(result.last_loss)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.arch_name == arch
    assert read_metadata(result.model_path)["deblurcli.arch"] == arch
    image = torch.rand(1, 3, 40, 44)
    out = restore_tensor(model, image)
    assert out.shape == image.shape and torch.isfinite(out).all()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,kind") and any(",val," in r for r in rows)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_every_arch_names_a_recipe() -> None:
    # training owns the arch → recipe table; it covers exactly the registry's names
    assert sorted(RECIPES) == sorted(list_archs())
    for arch in list_archs():
        assert recipe_for_arch(arch).name == arch
        assert recipe_for_arch(arch).losses or recipe_for_arch(arch).adversarial
    assert recipe_for_arch("simplecnn").grad_clip == 1.0
    assert recipe_for_arch("deblurgan").adversarial.n_critic == 5
    assert [t.name for t in parse_losses("mae")] == ["l1"]
    terms = parse_losses("mse:1,perceptual@conv3_3:0.1")
    assert terms[1].layer == "conv3_3" and terms[1].weight == 0.1


@pytest.mark.parametrize(
    ("changes", "message", "flag"),
    [
        ({"lr": -1.0}, "lr must be a finite number > 0, got -1.0", "--lr "),
        ({"val_every": 0}, "val_every must be >= 1, got 0", "--val-every "),
        ({"bn_calibration": -1}, "bn_calibration must be >= 0, got -1", "--bn-calibration "),
        ({"width": "huge"}, "width must be 'default' or 'tiny', not 'huge'", "--width "),
        ({"warmup": -1}, "warmup must be 0 or more steps", "--warmup "),
        ({"arch": "deblurgan", "n_critic": 0}, "n_critic must be at least 1", "--n-critic "),
        (
            {"arch": "resnetencdec", "patch_size": 40},
            "patch_size must be a multiple of 32 for resnetencdec (try 64)",
            "--patch-size ",
        ),
    ],
)
def test_library_errors_name_the_option_not_the_flag(pairs, tmp_path, changes, message, flag):
    config = _config(changes.pop("arch", "transformnet"), pairs, tmp_path / "run", **changes)
    with pytest.raises(UsageError) as info:
        Trainer(config)
    assert str(info.value) == message  # what a library caller reads
    assert info.value.for_cli() == flag + message.split(" ", 1)[1]  # what the CLI prints


def test_training_state_keeps_its_layout(pairs: Path, tmp_path: Path) -> None:
    # Runs written before the split must resume: these keys are the file's format.
    run = tmp_path / "run"
    train(_config("skipae", pairs, run, steps=2))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert list(state) == [
        "step", "model", "optimizer", "scheduler", "scaler", "critic", "critic_optimizer",
        "rng", "best_psnr", "config", "init",
    ]  # fmt: skip
    assert state["step"] == 2 and state["init"] is None and len(state["rng"]) == 1
    assert set(state["rng"][0]) == {"torch", "cuda", "python"}
    assert json.loads(state["config"])["arch"] == "skipae" and state["critic"] is not None


def _train_losses(run: Path) -> dict[int, str]:
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    return {int(r[0]): r[3] for r in rows if r[1] == "train"}


def test_resume_continues_exactly(pairs: Path, tmp_path: Path) -> None:
    # deblurgan: dropout, WGAN-GP interpolation noise and a critic optimiser all need state.
    kw = {"steps": 4, "n_critic": 2, "batch_size": 2}
    whole = train(_config("deblurgan", pairs, tmp_path / "a", **kw))
    part = _config("deblurgan", pairs, tmp_path / "b", stop_after=2, **kw)
    assert train(part).step == 2
    resumed = train(_config("deblurgan", pairs, tmp_path / "b", resume=True, **kw))
    assert resumed.step == 4
    assert _train_losses(tmp_path / "a") == _train_losses(tmp_path / "b")
    assert resumed.last_loss == whole.last_loss
    a, b = (
        load_model(tmp_path / "a" / "last.safetensors"),
        load_model(tmp_path / "b" / "last.safetensors"),
    )
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_missing_vgg_is_warned_and_recorded(pairs: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING"):
        result = train(_config("simplecnn", pairs, tmp_path / "run", steps=2))
    assert "perceptual loss dropped" in caplog.text
    assert result.perceptual == "dropped"
    assert read_metadata(result.model_path)["perceptual"] == "dropped"
    assert "perceptual" not in (tmp_path / "run" / "metrics.csv").read_text()


def test_missing_vgg_swaps_only_the_perceptual_term(pairs: Path, tmp_path: Path) -> None:
    # deblurgan's fallback (L1 in place of the perceptual term) must leave a PSNR term alone.
    loss = "perceptual@conv3_3:100,psnr:1"
    result = train(_config("deblurgan", pairs, tmp_path / "run", loss=loss, adversarial=False))
    assert result.perceptual == "dropped"
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    terms = [r.split(",")[4] for r in rows[1:] if r.split(",")[1] == "train"]
    assert terms and all([n.split("=")[0] for n in t.split()] == ["l1", "psnr"] for t in terms)


def test_vgg_weights_file_enables_perceptual(pairs: Path, tmp_path: Path, caplog) -> None:
    import torchvision

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    weights = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, weights)
    result = train(_config("simplecnn", pairs, tmp_path / "run", steps=2, vgg_weights=weights))
    assert result.perceptual.startswith("vgg19 conv4_4")
    assert "perceptual=" in (tmp_path / "run" / "metrics.csv").read_text()
    # A recipe without a perceptual term says the file is not used, rather than ignore it.
    with caplog.at_level("WARNING"):
        Trainer(_config("transformnet", pairs, tmp_path / "plain", vgg_weights=weights))
    assert "vgg_weights ignored" in caplog.text


def test_corrupt_files_are_skipped(tmp_path: Path) -> None:
    root = _write_pairs(tmp_path / "data", n=5)
    truncated = root / "blurred" / "im1.png"
    truncated.write_bytes(truncated.read_bytes()[:200])  # header fine, pixels cut off
    (root / "sharp" / "im2.png").write_bytes(b"not an image")
    cfg = _config("transformnet", root, tmp_path / "run", steps=3, val_fraction=0.0, workers=1)
    result = train(cfg)  # a worker process reports what it skipped
    assert result.step == 3
    text = "\n".join(result.problems)
    assert "im1" in text and "im2" in text


def test_probe_compares_sizes_after_exif_orientation(tmp_path: Path) -> None:
    from PIL import Image

    upright = (natural_image(48, 64, seed=4) * 255).astype(np.uint8)  # 48 high, 64 wide
    blurred = write_image(tmp_path / "blurred.png", ImageData(upright.astype(np.float32) / 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: 64 high, 48 wide; shown (and read) upright
    sharp = tmp_path / "sharp.jpg"
    Image.fromarray(np.rot90(upright, 1).copy()).save(sharp, exif=exif.tobytes(), quality=95)
    example = ds.Example("p", sharp, blurred)
    good, problems = ds.probe([example])
    assert good == [example] and not problems
    b, s, skipped = ds.PairDataset(good, PATCH)[0]  # and the pair really loads
    assert b.shape == s.shape == (3, PATCH, PATCH) and not skipped


def test_dataset_split_and_sampler_shards(pairs: Path) -> None:
    examples = ds.examples_from_pairs(
        [type("P", (), {"name": f"x{i}", "sharp": "s", "blurred": "b"}) for i in range(50)]
    )
    train_set, val_set = ds.split_by_name(examples, 0.2)
    assert train_set and val_set and not {e.name for e in train_set} & {e.name for e in val_set}
    assert ds.split_by_name(list(reversed(examples)), 0.2)[1] == list(reversed(val_set))
    take = 10
    shards = [
        [k for k, _ in zip(ds.StepSampler(20, seed=1, rank=r, world=2), range(take), strict=False)]
        for r in (0, 1)
    ]
    assert not {i for i, _ in shards[0]} & {i for i, _ in shards[1]}
    later = list(zip(ds.StepSampler(20, seed=1, start=4, rank=0, world=2), range(6), strict=False))
    assert [k for k, _ in later] == shards[0][4:]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_cli_kill_and_resume(pairs: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "deblurcli", "train", "--arch", "simplecnn", "--width", "tiny"]
    cmd += ["--data", str(pairs), "--patch-size", "32", "--batch-size", "2", "--workers", "1"]
    cmd += ["--out", str(run), "--steps", "4000", "--ckpt-every", "5", "--val-every", "1000"]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    helpers = descendants(proc.pid)  # the DataLoader worker (and any multiprocessing server)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:  # a killed trainer must not leave its worker processes behind
        deadline = time.time() + 30
        while alive(helpers) and time.time() < deadline:
            time.sleep(0.5)
        assert helpers and not alive(helpers), f"orphaned processes: {alive(helpers)}"
    finally:
        for pid in alive(helpers):
            os.kill(pid, signal.SIGKILL)
    assert (run / "model.safetensors").is_file()
    done = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    again = subprocess.run(
        cmd[:-6] + ["--steps", str(done + 5), "--resume", "--json", "--workers", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["step"] == done + 5


def test_cli_resume_checks_the_arch_and_says_when_done(pairs: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deblurcli.cli import app

    args = ["train", "--width", "tiny", "--data", str(pairs), "--patch-size", "32"]
    args += ["--batch-size", "2", "--steps", "1", "--workers", "0", "--out", str(tmp_path)]
    first = CliRunner().invoke(app, [*args, "--arch", "transformnet"])
    assert first.exit_code == 0, first.output
    # The run is transformnet's: another --arch must not silently train it (or claim to).
    wrong = CliRunner().invoke(app, [*args, "--arch", "resnetencdec", "--resume"])
    assert wrong.exit_code == 2 and "resume it with --arch transformnet" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1
    # The run folder keeps the result as --json prints it, for scripts to read.
    result_file = tmp_path / "result.json"
    written = json.loads(result_file.read_text())
    assert written["step"] == 1 and written["arch"] == "transformnet"
    assert written["model_path"] == str(tmp_path / "model.safetensors")
    stamp = result_file.stat().st_mtime_ns
    # Resuming a finished run trains nothing and says so (no "loss nan").
    again = CliRunner().invoke(app, [*args, "--arch", "transformnet", "--resume", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["new_steps"] == 0
    assert result_file.stat().st_mtime_ns == stamp  # nothing trained: left as it was
    again = CliRunner().invoke(app, [*args, "--arch", "transformnet", "--resume"])
    assert again.exit_code == 0, again.output
    assert "already trained for 1/1 steps" in again.output and "nan" not in again.output
    # A resume that trains rewrites it.
    more = [*args, "--steps", "2", "--arch", "transformnet", "--resume"]  # the last --steps
    more = CliRunner().invoke(app, more)
    assert more.exit_code == 0, more.output
    assert json.loads(result_file.read_text())["step"] == 2


def test_cli_bad_patch_size_is_one_line_error(pairs: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deblurcli.cli import app

    args = ["train", "--arch", "resnetencdec", "--width", "tiny", "--data", str(pairs)]
    result = CliRunner().invoke(app, [*args, "--patch-size", "40", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "multiple of 32" in result.output
    # A --config value of the wrong type: one line, not the builder's TypeError traceback.
    bad = ["train", "--arch", "transformnet", "--width", "tiny", "--data", str(pairs)]
    bad += ["--config", "n_blocks=abc", "--out", str(tmp_path / "bad")]
    result = CliRunner().invoke(app, bad)
    assert result.exit_code == 2 and "--config n_blocks='abc'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and result.exception.__class__ is SystemExit
    # --out naming a file (or a path below one): one line, no NotADirectoryError traceback.
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        result = CliRunner().invoke(app, [*args, "--patch-size", "32", "--out", str(out)])
        assert result.exit_code == 2 and "--out" in result.output, result.output
        assert result.exception.__class__ is SystemExit
    # Plain photos without --degrade: the error says how to train on them.
    photos = ["train", "--arch", "transformnet", "--data", str(pairs / "sharp")]
    result = CliRunner().invoke(app, [*photos, "--out", str(tmp_path / "photos")])
    assert result.exit_code == 2 and "--degrade" in result.output
    # --data and --sharp/--blurred together: ambiguous, not one silently ignored.
    both = [*photos, "--sharp", str(pairs / "sharp"), "--blurred", str(pairs / "blurred")]
    result = CliRunner().invoke(app, [*both, "--out", str(tmp_path / "both")])
    assert result.exit_code == 2 and "either a dataset folder or both" in result.output


def test_torchrun_gloo_two_processes(pairs: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [
        "-m",
        "deblurcli",
        "train",
        "--arch",
        "skipae",
        "--width",
        "tiny",
    ]  # GAN: hand-synced critic
    cmd += ["--data", str(pairs), "--patch-size", "32", "--batch-size", "2", "--steps", "3"]
    cmd += ["--workers", "0", "--device", "cpu", "--out", str(run), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["step"] == 3
    assert load_model(run).arch_name == "skipae"


def test_degrade_on_the_fly(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for i in range(4):
        write_image(folder / f"p{i}.png", ImageData(natural_image(48, 48, seed=10 + i)))
    examples = ds.sharp_only_examples(folder)
    data = ds.PairDataset(examples, PATCH, degrade="gaussian", seed=3)
    key = (1, (3, 0, 0, 5))
    blurred, sharp, skipped = data[key]
    assert blurred.shape == sharp.shape == (3, PATCH, PATCH) and not skipped
    assert torch.equal(data[key][0], blurred)  # the key alone decides the sample
    assert (blurred - sharp).abs().mean() > 1e-3  # it really was blurred
    # A sharp edge loses contrast under blur: gradients shrink.
    assert blurred.diff(dim=-1).abs().mean() < sharp.diff(dim=-1).abs().mean()
    cfg = _config("transformnet", folder, tmp_path / "run", steps=2, degrade="gaussian")
    result = train(cfg)
    assert result.step == 2 and result.best_psnr is not None
    bad = _config("transformnet", folder, tmp_path / "bad", degrade="sideways")
    with pytest.raises(UsageError, match="unknown degrade"):
        train(bad)


def test_validation_pairs_do_not_depend_on_the_seed(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deblurcli.cli import app

    folder = tmp_path / "photos"
    for i in range(3):
        write_image(folder / f"p{i}.png", ImageData(natural_image(64, 64, seed=40 + i)))
    base = ["train", "--arch", "transformnet", "--width", "tiny", "--data", str(folder)]
    base += ["--val", str(folder), "--patch-size", "32", "--batch-size", "2", "--steps", "1"]
    base += ["--workers", "0", "--degrade", "mix", "--val-crops", "2", "--json"]
    blurry = []
    for seed in (0, 7):
        out = ["--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]
        result = CliRunner().invoke(app, [*base, *out])
        assert result.exit_code == 0, result.output
        blurry.append(json.loads(result.stdout)["blurry_psnr"])
    assert blurry[0] == blurry[1]


def test_degrade_options_reach_the_blur_and_the_run_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deblurcli.cli import app

    folder = tmp_path / "photos"
    for i in range(4):
        write_image(folder / f"p{i}.png", ImageData(natural_image(64, 64, seed=20 + i)))
    base = ["train", "--arch", "transformnet", "--width", "tiny", "--data", str(folder)]
    base += ["--patch-size", "32", "--batch-size", "2", "--steps", "1", "--workers", "0"]
    blurry = {}
    for sigma in (0.5, 3.0):
        run = tmp_path / f"s{sigma}"
        opts = ["--degrade", "gaussian", "--degrade-option", f"gaussian_sigma=[{sigma},{sigma}]"]
        opts += ["--degrade-option", "gaussian_anisotropic_prob=0"]
        result = CliRunner().invoke(app, [*base, *opts, "--out", str(run), "--json"])
        assert result.exit_code == 0, result.output
        blurry[sigma] = json.loads(result.stdout)["blurry_psnr"]
        saved = json.loads((run / "config.json").read_text())
        assert saved["config"]["degrade_options"]["gaussian_sigma"] == [sigma, sigma]
    assert blurry[3.0] < blurry[0.5] - 3  # the validation crops really got the wider blur
    for opts, message in (
        (["--degrade", "mix", "--degrade-option", "nope=1"], "unknown --degrade-option nope"),
        (["--degrade", "mix", "--degrade-option", "mix_noise_prob=2"], "probability"),
        (["--degrade-option", "mix_noise_prob=0"], "--degrade-option needs --degrade KIND"),
        (["--degrade", "mix", "--degrade-option", "oops"], "--degrade-option expects key=value"),
    ):
        result = CliRunner().invoke(app, [*base, *opts, "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_validation_views_keep_the_centre_and_add_crops_around_it(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    photo = natural_image(96, 128, seed=31)
    write_image(folder / "p.png", ImageData(photo))
    write_image(tmp_path / "blurred" / "p.png", ImageData(photo[::-1].copy()))
    sharp_only = ds.sharp_only_examples(folder)
    pair = [ds.Example("p.png", folder / "p.png", tmp_path / "blurred" / "p.png")]
    for examples, degrade in ((sharp_only, "mix"), (pair, None)):
        one = ds.PairDataset(examples, PATCH, train=False, degrade=degrade)
        four = ds.PairDataset(ds.with_views(examples, 4), PATCH, train=False, degrade=degrade)
        again = ds.PairDataset(ds.with_views(examples, 4), PATCH, train=False, degrade=degrade)
        assert len(four) == 4 and [e.view for e in four.examples] == [0, 1, 2, 3]
        for i in range(4):  # deterministic: the name and the view decide the pair
            assert all(torch.equal(a, b) for a, b in zip(four[i][:2], again[i][:2], strict=True))
        # View 0 is the centre crop with the image's own blur, as with a single view.
        assert torch.equal(four[0][0], one[0][0]) and torch.equal(four[0][1], one[0][1])
        sharps = [four[i][1] for i in range(4)]
        assert all(not torch.equal(sharps[0], s) for s in sharps[1:])  # other places
    # On the fly, every view gets a blur of its own (its own seed).
    four = ds.PairDataset(ds.with_views(sharp_only, 4), PATCH, train=False, degrade="mix")
    records = [four.examples[i].seed_name for i in range(4)]
    assert records == ["p.png", "p.png#1", "p.png#2", "p.png#3"]
    with pytest.raises(UsageError, match="val-crops|val_crops"):
        ds.with_views(sharp_only, 10)


def test_cli_val_crops_validates_on_more_crops(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deblurcli.cli import app

    folder = tmp_path / "photos"
    for i in range(3):
        write_image(folder / f"p{i}.png", ImageData(natural_image(96, 96, seed=40 + i)))
    base = ["train", "--arch", "transformnet", "--width", "tiny", "--data", str(folder)]
    base += ["--val", str(folder), "--degrade", "gaussian", "--patch-size", "32"]
    base += ["--batch-size", "2", "--steps", "1", "--workers", "0", "--json"]
    result = CliRunner().invoke(app, [*base, "--val-crops", "3", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["val_crops"] == 3
    trainer = Trainer(
        _config("transformnet", folder, tmp_path / "t", degrade="gaussian", val=folder, val_crops=3)
    )
    try:
        assert len(trainer._validation_pairs()) == 9  # three photos, three crops each
    finally:
        trainer.close()
    bad = CliRunner().invoke(app, [*base, "--val-crops", "10", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--val-crops" in bad.output


def test_flat_crops_are_skipped(tmp_path: Path) -> None:
    """Issue 8: skip flat crops. Half of this photo is clear sky; no crop may come from it."""
    photo = natural_image(64, 192, seed=4)
    photo[:, :128] = 0.6
    write_image(tmp_path / "p" / "sky.png", ImageData(photo))
    write_image(tmp_path / "b" / "sky.png", ImageData(photo))
    on_the_fly = ds.PairDataset(ds.sharp_only_examples(tmp_path / "p"), PATCH, degrade="gaussian")
    pairs = ds.PairDataset(
        [ds.Example("sky.png", tmp_path / "p" / "sky.png", tmp_path / "b" / "sky.png")], PATCH
    )
    for data in (on_the_fly, pairs):
        for step in range(40):
            sharp = data[(0, (0, 0, 0, step))][1]
            assert sharp.std() >= 0.02  # ds.FLAT_CROP_STD


def test_nan_loss_stops_and_keeps_the_last_checkpoint(
    pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deblurcli.errors import TrainingDivergedError
    from deblurcli.training import losses

    run = tmp_path / "run"
    train(_config("transformnet", pairs, run, steps=2))
    state = (run / "checkpoints" / "last.pt").read_bytes()
    model = (run / "model.safetensors").read_bytes()
    monkeypatch.setitem(
        losses.PIXEL_LOSSES, "mse", lambda pred, target: (pred - target).sum() * np.nan
    )
    with pytest.raises(TrainingDivergedError, match=r"nan at step 3.*last\.pt"):
        train(_config("transformnet", pairs, run, steps=6, resume=True))
    assert (run / "checkpoints" / "last.pt").read_bytes() == state
    assert (run / "model.safetensors").read_bytes() == model


def test_cli_two_folders_val_dir_and_overrides(pairs: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deblurcli.cli import app

    val = _write_pairs(tmp_path / "val", n=2, size=40)
    run = tmp_path / "run"
    args = ["train", "--arch", "transformnet", "--width", "tiny", "--config", "n_blocks=2"]
    args += ["--sharp", str(pairs / "sharp"), "--blurred", str(pairs / "blurred")]
    args += ["--val", str(val), "--loss", "mae", "--lr", "3e-4", "--patch-size", "32"]
    args += ["--schedule", "cosine", "--weight-decay", "0.01", "--grad-clip", "0.5"]
    args += ["--batch-size", "2", "--steps", "2", "--workers", "0", "--out", str(run), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["best_psnr"] > 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["recipe"]["losses"] == [{"name": "l1", "weight": 1.0, "layer": None}]
    assert saved["recipe"]["lr"] == 3e-4 and saved["arch_config"]["n_blocks"] == 2
    assert saved["recipe"]["schedule"] == "cosine" and saved["recipe"]["grad_clip"] == 0.5
    assert saved["recipe"]["weight_decay"] == 0.01
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    lrs = [float(r[2]) for r in rows if r[1] == "train"]
    assert lrs and lrs[-1] < 3e-4  # cosine decay really drives the optimiser
    assert "l1=" in (run / "metrics.csv").read_text()
    assert load_model(run).arch_config["n_blocks"] == 2
    # The restore command loads the exported model by path.
    photo = write_image(tmp_path / "photo.png", ImageData(natural_image(40, 52, seed=9)))
    restored = CliRunner().invoke(
        app,
        [
            "restore",
            str(photo),
            "--model",
            str(run / "model.safetensors"),
            "-o",
            str(tmp_path / "o.png"),
        ],
    )
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "o.png").is_file()


def test_vgg_layer_names_match_torchvision() -> None:
    import torchvision

    from deblurcli.training.vgg import layer_indices

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    convs = [i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)]
    index = layer_indices()
    assert list(index.values()) == convs and len(index) == 16
    assert index["conv3_3"] == 14 and index["conv4_4"] == 25  # DeblurGAN's and seed 004's taps


def test_gradient_penalty_of_a_linear_critic() -> None:
    from deblurcli.training.losses import balanced_bce, gradient_penalty

    # D(x) = <w, x> has gradient w everywhere: the penalty is exactly (‖w‖ − 1)².
    w = torch.randn(1, 3, 8, 8)
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    expected = (w.norm() - 1) ** 2
    assert torch.allclose(gradient_penalty(critic, real, fake), expected, rtol=1e-5)
    # Balanced BCE: the rare edge class weighs as much in total as the background.
    target = torch.zeros(1, 1, 10, 10)
    target[..., 0, :] = 1  # 10 % edges
    logits = torch.zeros_like(target)  # p = 0.5 everywhere: per-pixel BCE = ln 2
    pos_share = 0.9 * 10 * np.log(2) / 100
    neg_share = 0.1 * 90 * np.log(2) / 100
    assert float(balanced_bce(logits, target)) == pytest.approx(pos_share + neg_share, rel=1e-6)


def test_trainer_exports_recomputed_batchnorm_statistics(pairs: Path, tmp_path: Path) -> None:
    # resnetencdec: BatchNorm in its ResNet encoder and its decoder.
    kw = {"steps": 2, "val_every": 2, "batch_size": 2}
    runs = {}
    for name, patches in (("precise", 6), ("moving", 0)):
        runs[name] = Trainer(
            _config("resnetencdec", pairs, tmp_path / name, bn_calibration=patches, **kw)
        )
        runs[name].run()
    batches = runs["precise"]._calibration_batches()
    assert [len(b) for b in batches] == [2, 2, 2] and runs["moving"]._calibration is None

    # The exported statistics are the average over the calibration patches.
    exported = load_model(tmp_path / "precise" / "model.safetensors")
    layers = batchnorm_layers(exported)
    stored = [(m.running_mean.clone(), m.running_var.clone()) for m in layers]
    to_device = runs["precise"].learner.to_device  # its memory format: the same sums
    assert recompute_batchnorm_stats(layers, exported, (to_device(b).float() for b in batches)) == 3
    for layer, (mean, var) in zip(layers, stored, strict=True):
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-3, atol=1e-4)

    # The calibration draws patches of its own: the weights trained are the same without it.
    a, b = (load_model(tmp_path / n / "last.safetensors").state_dict() for n in runs)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for name, value in a.items():
        if not name.endswith(stats):
            assert torch.equal(value, b[name]), name
    assert not all(torch.equal(a[n], b[n]) for n in a if n.endswith("running_mean"))


def test_models_without_batchnorm_draw_no_calibration_patches(pairs: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config("transformnet", pairs, tmp_path / "run", steps=2, val_every=2))
    trainer.run()
    assert trainer.calibrate_batchnorm() == 0 and trainer._calibration is None


def _stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_freeze_bn_fixes_the_statistics_and_resumes_exactly(pairs: Path, tmp_path: Path) -> None:
    kw = {"steps": 4, "val_every": 2, "ckpt_every": 2, "batch_size": 2, "bn_calibration": 4}
    whole = Trainer(_config("resnetencdec", pairs, tmp_path / "a", freeze_bn=True, **kw))
    start = _stats({k: v.clone() for k, v in whole.model.state_dict().items()})
    whole.begin()  # recomputes them for the starting weights, then freezes them
    fixed = _stats(whole.model.state_dict())
    assert all(not torch.equal(fixed[k], start[k]) for k in fixed)
    batches = whole.batches()
    whole.advance(next(batches))
    assert not any(m.training for m in batchnorm_layers(whole.model))  # eval mode in training
    del batches
    whole.close()
    train(_config("resnetencdec", pairs, tmp_path / "b", freeze_bn=True, **kw))
    for name in ("model.safetensors", "last.safetensors"):  # never updated afterwards
        saved = _stats(load_model(tmp_path / "b" / name).state_dict())
        for key, value in fixed.items():
            torch.testing.assert_close(saved[key], value.cpu(), rtol=0, atol=0)
    # A resumed run keeps the saved statistics, so it continues exactly.
    part = _config("resnetencdec", pairs, tmp_path / "c", freeze_bn=True, stop_after=2, **kw)
    train(part)
    train(_config("resnetencdec", pairs, tmp_path / "c", freeze_bn=True, resume=True, **kw))
    b, c = (load_model(tmp_path / n / "last.safetensors").state_dict() for n in "bc")
    for key, value in b.items():
        assert torch.equal(value, c[key]), key


def test_cli_freeze_bn_is_recorded(pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--arch", "resnetencdec", "--data", str(pairs), "--out", str(out)]
    args += ["--width", "tiny", "--patch-size", "32", "--batch-size", "2", "--steps", "1"]
    args += ["--workers", "0", "--freeze-bn", "--bn-calibration", "4", "--json"]
    from typer.testing import CliRunner

    from deblurcli.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["freeze_bn"] is True and config["bn_calibration"] == 4
