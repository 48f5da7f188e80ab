"""Pixel and frequency losses: values against numpy formulas, gradients, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_image

from deblurcli.errors import UsageError
from deblurcli.imageio import ImageData, write_image
from deblurcli.training import losses as L
from deblurcli.training.recipes import get_recipe, override, parse_losses


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(3, 3, 16, 20, generator=g)
    pred = (target + 0.1 * torch.randn(3, 3, 16, 20, generator=g)).clamp(0, 1)
    return pred, target


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def test_charbonnier_matches_its_formula() -> None:
    pred, target = _pair()
    want = np.mean(np.sqrt((_np(pred) - _np(target)) ** 2 + 1e-3**2))
    assert float(L.charbonnier_loss(pred, target)) == pytest.approx(want, rel=1e-5)


def test_psnr_loss_is_minus_the_mean_per_image_psnr() -> None:
    pred, target = _pair(1)
    pred[0] = target[0] + 0.3 * (pred[0] - target[0])  # images with different error levels
    mse = ((_np(pred) - _np(target)) ** 2).reshape(3, -1).mean(1)
    want = -np.mean(10 * np.log10(1.0 / mse))
    assert float(L.psnr_loss(pred, target)) == pytest.approx(want, rel=1e-4)
    assert float(L.psnr_loss(target, target)) == pytest.approx(10 * np.log10(1e-8), rel=1e-4)


def test_fft_losses_match_numpy_spectra() -> None:
    pred, target = _pair(2)
    a = np.fft.rfft2(_np(pred), norm="ortho")
    b = np.fft.rfft2(_np(target), norm="ortho")
    complex_l1 = np.mean(np.abs(np.stack([(a - b).real, (a - b).imag])))
    amplitude_l1 = np.mean(np.abs(np.abs(a) - np.abs(b)))
    assert float(L.fft_loss(pred, target)) == pytest.approx(complex_l1, rel=1e-4)
    assert float(L.fft_amplitude_loss(pred, target)) == pytest.approx(amplitude_l1, rel=1e-4)
    # A circular shift keeps every amplitude: only the complex term sees it.
    shifted = torch.roll(target, 3, dims=-1)
    assert float(L.fft_amplitude_loss(shifted, target)) < 1e-5
    assert float(L.fft_loss(shifted, target)) > 0.01


@pytest.mark.parametrize("name", ["l1", "mse", "charbonnier", "psnr", "fft", "fft_amp"])
def test_pixel_losses_give_descending_gradients(name: str) -> None:
    loss_fn = L.PIXEL_LOSSES[name]
    pred, target = _pair(3)
    pred = pred.clone().requires_grad_(True)
    loss = loss_fn(pred, target)
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        stepped = pred - 1e-3 * grad / grad.norm()
    assert float(loss_fn(stepped, target)) < float(loss.detach())
    # bf16 inputs (CPU autocast) are scored in fp32.
    assert loss_fn(pred.bfloat16(), target.bfloat16()).dtype == torch.float32


def test_parse_losses_knows_the_new_terms() -> None:
    terms = parse_losses("charbonnier, fft:0.05")
    assert [(t.name, t.weight) for t in terms] == [("charbonnier", 1.0), ("fft", 0.05)]
    terms = parse_losses("psnr:0.5,frequency:0.1,fft_amplitude:0.2")
    assert [t.name for t in terms] == ["psnr", "fft", "fft_amp"]
    with pytest.raises(UsageError, match="unknown loss 'fourier'"):
        parse_losses("fourier")


def test_warmup_override() -> None:
    recipe = override(get_recipe("transformnet"), warmup=50)
    assert recipe.warmup_steps == 50 and "50 warm-up steps" in recipe.describe()
    assert override(recipe).warmup_steps == 50  # None keeps the recipe's
    with pytest.raises(UsageError, match="warmup must be 0 or more"):
        override(recipe, warmup=-1)


def _photos(root: Path, n: int) -> Path:
    for i in range(n):
        write_image(root / f"p{i}.png", ImageData(natural_image(72, 72, seed=20 + i)))
    return root


@pytest.mark.parametrize(
    ("loss", "names"), [("charbonnier,fft:0.05", ["charbonnier", "fft"]), ("psnr", ["psnr"])]
)
def test_cli_trains_with_new_losses_and_warmup(loss: str, names: list[str], tmp_path: Path):
    from typer.testing import CliRunner

    from deblurcli.cli import app

    data, val = _photos(tmp_path / "train", 3), _photos(tmp_path / "val", 1)
    run = tmp_path / "run"
    args = ["train", "--arch", "transformnet", "--width", "tiny", "--data", str(data)]
    args += ["--val", str(val), "--degrade", "gaussian", "--loss", loss, "--lr", "1e-3"]
    args += ["--warmup", "4", "--patch-size", "32", "--batch-size", "2", "--steps", "2"]
    args += ["--workers", "0", "--out", str(run), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["best_psnr"] > 0
    recipe = json.loads((run / "config.json").read_text())["recipe"]
    assert [t["name"] for t in recipe["losses"]] == names and recipe["warmup_steps"] == 4
    metrics = (run / "metrics.csv").read_text()
    assert all(f"{name}=" in metrics for name in names)
    rows = [r.split(",") for r in metrics.splitlines()[1:]]
    lr_at_end = [float(r[2]) for r in rows if r[1] == "train"][-1]
    assert lr_at_end == pytest.approx(1e-3 * 3 / 4)  # linear warm-up: (step + 1) / 4 after 2


def test_cli_rejects_negative_warmup(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deblurcli.cli import app

    result = CliRunner().invoke(
        app, ["train", "--arch", "transformnet", "--data", str(tmp_path), "--warmup", "-3"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output


# ------------------------------------------------------------------ the loss registry
def test_registry_lists_every_term_parse_losses_accepts() -> None:
    names = L.loss_names()
    assert set(L.PIXEL_LOSSES) < set(names) and {"perceptual", "edge_bce"} < set(names)
    for name in names:
        assert [t.name for t in parse_losses(name)] == [name]
    with pytest.raises(UsageError, match="unknown loss 'fourier'; known: l1, mse") as info:
        L.build_loss("fourier")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(L.PIXEL_LOSSES))
def test_built_pixel_terms_match_the_functions(name: str) -> None:
    pred, target = _pair(3)
    term = L.build_loss(name, vgg=None, layer=None, arch="x", has_edges=False)  # extras ignored
    assert torch.equal(term(L.Prediction(pred), target), L.PIXEL_LOSSES[name](pred, target))


def test_built_perceptual_and_edge_terms() -> None:
    from deblurcli.training.vgg import VGGFeatures

    torch.manual_seed(0)
    nn = torch.nn
    layers = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    vgg = VGGFeatures(layers.append(nn.ReLU()), ["conv1_2"])  # VGG19's first block, random
    pred, target = _pair(4)
    term = L.build_loss("perceptual", vgg=vgg, layer="conv1_2")
    want = L.PerceptualLoss(vgg, "conv1_2")(pred, target)
    assert torch.equal(term(L.Prediction(pred), target), want)

    edges = torch.randn(3, 1, 16, 20)
    sides = [torch.randn(3, 1, 16, 20), torch.randn(3, 1, 16, 20)]
    term = L.build_loss("edge_bce", arch="edgenet", has_edges=True, layer=None)
    got = term(L.Prediction(pred, edges, sides), target)
    assert torch.equal(got, L.edge_loss(edges, sides, L.canny_edges(target)))
    with pytest.raises(UsageError) as info:
        L.build_loss("edge_bce", arch="transformnet", has_edges=False)
    assert str(info.value) == "loss edge_bce needs an edge branch; transformnet has none"
    assert info.value.for_cli().startswith("--loss edge_bce needs an edge branch")


def test_a_registered_loss_trains_by_name(tmp_path: Path, monkeypatch) -> None:
    from deblurcli.training import TrainConfig, train

    calls = []

    def tv_factory() -> L.LossFn:  # total variation of the output: a loss new to the trainer
        def loss(pred: L.Prediction, sharp: torch.Tensor) -> torch.Tensor:
            calls.append(pred.restored.shape)
            return (pred.restored[..., 1:] - pred.restored[..., :-1]).abs().mean()

        return loss

    monkeypatch.setitem(L._LOSSES, "tv", tv_factory)
    with pytest.raises(ValueError, match="registered twice"):
        L.register_loss("tv")(tv_factory)
    run = tmp_path / "run"
    config = TrainConfig(
        arch="transformnet",
        out=run,
        data=_photos(tmp_path / "train", 2),
        degrade="gaussian",
        loss="mse,tv:0.5",
        width="tiny",
        patch_size=32,
        batch_size=2,
        steps=2,
        log_every=1,
        device="cpu",
    )
    result = train(config)
    assert result.step == 2 and len(calls) == 2 and calls[0][0] == 2
    assert "tv=" in (run / "metrics.csv").read_text()


def test_saved_recipes_load_back_including_runs_from_before_named_critics() -> None:
    import dataclasses

    from deblurcli.training.recipes import RECIPES, Recipe

    for recipe in RECIPES.values():  # config.json holds dataclasses.asdict(recipe) as JSON
        saved = json.loads(json.dumps(dataclasses.asdict(recipe)))
        assert Recipe.from_dict(saved) == recipe
    old = json.loads(json.dumps(dataclasses.asdict(RECIPES["deblurgan"])))
    del old["adversarial"]["critic"]  # a run folder written before the discriminator registry
    assert Recipe.from_dict(old) == RECIPES["deblurgan"]
