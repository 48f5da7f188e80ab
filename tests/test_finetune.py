"""deblur train --init MODEL / --freeze PREFIX: fine-tuning from pretrained weights (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
import torch.nn.functional as F
from conftest import natural_image
from safetensors import safe_open
from typer.testing import CliRunner

from deblurcli.archs import create, get_spec, resolve_config
from deblurcli.cli import app
from deblurcli.imageio import ImageData, read_image, write_image
from deblurcli.pretraining.commands import shown
from deblurcli.pretraining.pipeline import Paths, train_command
from deblurcli.pretraining.plan import load_plan
from deblurcli.training import TrainConfig, train
from deblurcli.training.trainer import Trainer
from deblurcli.training.warmstart import INIT_KEY
from deblurcli.weights import get_pretrained, read_metadata, save_checkpoint, sha256_file
from deblurcli.weights.card import model_card
from deblurcli.weights.resolve import load_model

PATCH = 32
PLAN = Path(__file__).resolve().parent.parent / "scripts" / "pretrained_plan.toml"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    for i in range(6):
        sharp = natural_image(64, 64, seed=i)
        blurred = cv2.GaussianBlur(sharp, (0, 0), 1.5)
        write_image(root / "sharp" / f"im{i}.png", ImageData(sharp))
        write_image(root / "blurred" / f"im{i}.png", ImageData(blurred))
    return root


@pytest.fixture(autouse=True)
def _no_vgg_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(out=out, data=data, patch_size=PATCH, batch_size=2, steps=2)
    base.update(val_every=1, ckpt_every=1, log_every=1, precision="fp32", device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def base_run(pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformnet run folder: the model the fine-tuning tests start from."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(_config(pairs, out, arch="transformnet", width="tiny", lr=1e-3))
    return out


def _cli(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def _common(pairs: Path, out: Path) -> list[str]:
    args = ["--data", str(pairs), "--patch-size", str(PATCH), "--batch-size", "2"]
    return [*args, "--steps", "2", "--workers", "0", "--precision", "fp32", "--out", str(out)]


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert result.exception.__class__ is SystemExit
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


@pytest.mark.parametrize("source", ["shipped", "run folder"])
def test_init_starts_from_the_models_weights(source: str, pairs: Path, base_run: Path, tmp_path):
    init = "simplecnn" if source == "shipped" else str(base_run)
    trainer = Trainer(_config(pairs, tmp_path / "ft", init=init))
    reference = load_model(init)
    expected_arch = "simplecnn" if source == "shipped" else "transformnet"
    assert trainer.cfg.arch == reference.arch_name == expected_arch
    if source == "shipped":  # exactly the shipped config: registry default + manifest overrides
        shipped = resolve_config("simplecnn", **get_pretrained("simplecnn").config)
        assert trainer.model.arch_config == shipped
    for (name, got), (_, want) in zip(
        trainer.model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert got.dtype == torch.float32 and torch.equal(got, want), name
    # The first step's loss is the loaded model's loss on that batch (both recipes: MSE, the
    # perceptual term of simplecnn is dropped without VGG19 weights).
    assert [t.name for t in trainer.terms] == ["mse"]
    batch = next(trainer._loader())
    with torch.no_grad():
        expected = F.mse_loss(reference(batch[0]), batch[1]).item()
    first = trainer.train_step(batch)["loss"]
    assert first == pytest.approx(expected, rel=1e-5)
    assert not any(
        torch.equal(a, b)
        for a, b in zip(trainer.model.parameters(), reference.parameters(), strict=True)
    )


@pytest.fixture(scope="module")
def finetuned(pairs: Path, base_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """``deblur train --init BASE_RUN``: the run folder and the CLI result."""
    out = tmp_path_factory.mktemp("finetuned") / "run"
    result = _cli("--init", str(base_run), "--arch", "transformnet", *_common(pairs, out), "--json")
    assert result.exit_code == 0, result.output
    return out, result


def test_cli_fine_tune_records_lineage_and_restores(finetuned, pairs, base_run, tmp_path):
    out, result = finetuned
    base_file = base_run / "model.safetensors"
    lineage = json.loads((out / "config.json").read_text())["init"]
    assert lineage["model"] == str(base_run) and lineage["arch"] == "transformnet"
    assert lineage["sha256"] == sha256_file(base_file)
    assert Path(lineage["file"]) == base_file.resolve()
    assert json.loads(result.output[result.output.index("{") :])["init"] == lineage
    for export in ("model.safetensors", "last.safetensors"):
        assert json.loads(read_metadata(out / export)[INIT_KEY]) == lineage
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert json.loads(state["init"]) == lineage

    # The fine-tuned export restores like any model.
    image = natural_image(40, 44, seed=9)
    write_image(tmp_path / "in.png", ImageData(image))
    restored = CliRunner().invoke(
        app,
        ["restore", str(tmp_path / "in.png"), "--model", str(out), "-o", str(tmp_path / "o.png")],
    )
    assert restored.exit_code == 0, restored.output
    assert read_image(tmp_path / "o.png").pixels.shape == image.shape

    # A second generation names the first one as its parent: the lineage is a chain.
    child = Trainer(_config(pairs, tmp_path / "ft2", init=str(out / "model.safetensors")))
    assert child.lineage["sha256"] == sha256_file(out / "model.safetensors")
    assert child.lineage["parent"] == lineage


def test_shipped_fp16_init_is_upcast_and_lineage_names_the_manifest(pairs: Path, tmp_path: Path):
    shipped = get_pretrained("simplecnn")
    with safe_open(str(shipped.package_path), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
    trainer = Trainer(_config(pairs, tmp_path / "ft", init="simplecnn", arch="simplecnn"))
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert trainer.lineage["manifest_name"] == "simplecnn"
    assert trainer.lineage["sha256"] == shipped.sha256 == sha256_file(shipped.package_path)
    # An override that keeps every shape applies; the optimiser starts fresh.
    kept = Trainer(
        _config(pairs, tmp_path / "ft2", init="simplecnn", arch_config={"logit_residual": False})
    )
    assert kept.model.arch_config["logit_residual"] is False
    assert not kept.learner.opt.state


def test_resume_of_a_fine_tuned_run_keeps_its_weights_and_lineage(
    pairs: Path, base_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    whole = train(_config(pairs, tmp_path / "whole", init=str(base_run)))
    part = train(_config(pairs, tmp_path / "part", init=str(base_run), stop_after=1))
    assert part.step == 1

    def no_init(value):
        raise AssertionError("--resume must not load the init model again")

    monkeypatch.setattr("deblurcli.training.trainer.load_init", no_init)
    resumed = train(_config(pairs, tmp_path / "part", resume=True))  # arch from the run
    assert resumed.step == 2 and resumed.last_loss == whole.last_loss
    assert resumed.init == whole.init and resumed.init["sha256"]
    a, b = (load_model(tmp_path / run / "last.safetensors") for run in ("whole", "part"))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    meta = read_metadata(tmp_path / "part" / "last.safetensors")
    assert json.loads(meta[INIT_KEY]) == whole.init


def test_cli_refusals_are_one_line(pairs: Path, base_run: Path, tmp_path: Path):
    common = _common(pairs, tmp_path / "x")
    # A different arch: both named.
    out = _one_line_error(_cli("--init", str(base_run), "--arch", "simplecnn", *common))
    assert "transformnet" in out and "simplecnn" in out
    # A config that changes a parameter's shape: the parameter is named.
    out = _one_line_error(_cli("--init", str(base_run), "--config", "base=8", *common))
    assert "changes parameter net.0.1.weight" in out and "base=8" in out
    # --init with --resume.
    out = _one_line_error(_cli("--init", "simplecnn", "--resume", *common))
    assert "--init and --resume are exclusive" in out
    # --width would replace the init model's config.
    out = _one_line_error(_cli("--init", "simplecnn", "--width", "tiny", *common))
    assert "--width" in out
    # A --freeze prefix that matches nothing.
    out = _one_line_error(_cli("--init", "simplecnn", "--freeze", "encoder", *common))
    assert "--freeze encoder" in out and "features" in out
    # Neither --arch nor --init.
    out = _one_line_error(_cli(*common))
    assert "--arch" in out
    # An init model that does not exist: resolve.py's one-line error.
    _one_line_error(_cli("--init", str(tmp_path / "nope.safetensors"), *common), code=1)
    assert not (tmp_path / "x").exists()


def _tiny_init(arch: str, folder: Path, **config) -> Path:
    torch.manual_seed(1)
    model = create(arch, **{**get_spec(arch).tiny_config, **config})
    return save_checkpoint(model, folder / f"{arch}.safetensors")


@pytest.mark.parametrize(
    ("arch", "frozen"), [("resnetencdec", ("stem", "layers")), ("edgenet", ("edgenet.",))]
)
def test_freeze_keeps_frozen_parameters_byte_identical(
    arch: str, frozen: tuple[str, ...], pairs: Path, tmp_path: Path, monkeypatch
):
    if arch == "resnetencdec":  # a checkpoint that asks for ImageNet init: never downloaded
        from deblurcli.archs.resnetencdec import ResNetEncDec

        monkeypatch.setattr(ResNetEncDec, "_load_imagenet", staticmethod(lambda *a: None))
        init = _tiny_init(arch, tmp_path, encoder_weights="imagenet")

        def refuse(*args):
            raise AssertionError("ImageNet weights requested although --init provides them")

        monkeypatch.setattr(ResNetEncDec, "_load_imagenet", staticmethod(refuse))
        assert read_metadata(init)["deblurcli.config"].count('"imagenet"') == 1
    else:
        init = _tiny_init(arch, tmp_path)
    args = ["--init", str(init), *_common(pairs, tmp_path / "ft"), "--lr", "1e-2"]
    for prefix in frozen:
        args += ["--freeze", prefix]
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    before = load_model(init).state_dict()  # parameters and batch-norm statistics
    after = load_model(tmp_path / "ft" / "last.safetensors").state_dict()
    still = {k for k in before if k.startswith(frozen)}
    trained = set(before) - still
    assert still and trained
    for name in still:
        assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["config"]["freeze"] == list(
        frozen
    )


def test_model_card_and_plan_carry_the_init(finetuned, pairs: Path, base_run: Path, tmp_path):
    out, _ = finetuned
    child = Trainer(_config(pairs, tmp_path / "child", init=str(out)))
    entry = {"name": "transformnet", "description": "d", "file": "transformnet.safetensors"}
    entry |= {"size": 1000, "sha256": "0" * 64, "license": "MIT", "dataset": "x", "recipe": "r"}
    info = {"title": "t", "arch_config": {}, "default_config": {}, "params": 1, "recipe": "r"}
    info |= {"step": 2, "precision": "fp32", "patches_per_s": 1.0, "eval": {"rows": []}}
    info |= {"bars": {}, "init": child.lineage}
    card = model_card("transformnet", entry, info, None, False)
    first = sha256_file(out / "model.safetensors")
    grand = json.loads((out / "config.json").read_text())["init"]["sha256"]
    assert (
        f"- initialised from: `{out}` (transformnet, file `model.safetensors`, sha256 `{first}`)"
        in card
    )
    assert f"  - which was initialised from: `{base_run}` (transformnet" in card
    assert card.index(first) < card.index(grand)
    info["init"] = None
    assert "initialised from" not in model_card("transformnet", entry, info, None, False)
    # A plan entry with `init` fine-tunes: the command carries --init.
    plan = {**load_plan(PLAN)["edgenet"], "init": "edgenet"}
    paths = Paths(
        runs=tmp_path,
        pretrained=tmp_path,
        manifest=tmp_path / "m.toml",
        docs=tmp_path,
        train_photos=tmp_path,
        val_photos=tmp_path,
    )
    assert "--init edgenet" in shown(train_command("edgenet", plan, paths, "default"))
    # freeze_bn is a fine-tuning setting: it reaches the command with an init only.
    plan["freeze_bn"] = True
    assert "--init edgenet --freeze-bn" in shown(train_command("edgenet", plan, paths, "default"))
    del plan["init"]
    assert "--freeze-bn" not in shown(train_command("edgenet", plan, paths, "default"))
