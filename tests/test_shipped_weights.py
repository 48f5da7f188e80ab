"""The pretrained weights shipped inside the package (issue 8), as a user gets them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from deblurcli import load_model, psnr, restore_tensor
from deblurcli.archs import list_archs, model_config, resolve_config
from deblurcli.cli import app
from deblurcli.imageio import read_image
from deblurcli.weights import default_model_name, list_pretrained, sha256_file

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
MAX_FILE = 30 * 1000 * 1000
MAX_TOTAL = 100 * 1000 * 1000


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """The bundled manifest, no network, an empty Hugging Face cache."""
    monkeypatch.delenv("DEBLURCLI_MANIFEST", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def _shipped() -> dict:
    return {e.arch: e for e in list_pretrained() if e.shipped}


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels[..., :3].transpose(2, 0, 1)))[None]


def test_every_arch_ships_fp16_weights_within_the_size_limits():
    shipped = _shipped()
    assert set(shipped) == set(list_archs())
    for entry in shipped.values():
        path = entry.package_path
        assert path.parent == REPO / "deblurcli" / "pretrained"
        assert path.stat().st_size == entry.size <= MAX_FILE
        assert sha256_file(path) == entry.sha256
        with safe_open(str(path), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
        assert "F16" in dtypes and not dtypes & {"F32", "F64", "BF16"}, (entry.name, dtypes)
    assert sum(e.size for e in shipped.values()) <= MAX_TOTAL


def test_manifest_records_how_each_model_was_made_and_scored():
    for arch, entry in _shipped().items():
        assert entry.recipe.startswith(f"deblur train --arch {arch} ")
        assert "photo pool" in entry.dataset and entry.license
        assert "--benchmark" in entry.benchmark
        for key in ("psnr", "ssim", "psnr_gain", "blurry_psnr", "unsharp_psnr"):
            assert key in entry.scores, (arch, key)
        for family in ("gaussian", "motion", "noisy"):
            assert f"{family}_psnr_gain" in entry.scores
            assert f"check_{family}_psnr_gain" in entry.scores  # the independent photos
        card = (REPO / "docs" / "models" / f"{arch}.md").read_text(encoding="utf-8")
        assert entry.sha256 in card and f"{entry.scores['psnr']:.2f}" in card
        assert (REPO / "docs" / "models" / f"{arch}.png").is_file()


def test_default_model_is_the_best_on_the_benchmark():
    gains = {e.name: e.scores["psnr_gain"] for e in list_pretrained()}
    assert default_model_name() == max(gains, key=gains.get)
    default = default_model_name()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"| {default} (default) |" in readme


@pytest.mark.parametrize("arch", list_archs())
def test_shipped_model_loads_offline_and_restores_a_photo(arch):
    entry = _shipped()[arch]
    model = load_model(arch)
    assert model.arch_name == arch
    loaded, recorded = (
        model_config(arch, c) for c in (model.arch_config, resolve_config(arch, **entry.config))
    )
    assert loaded == recorded
    blurry = read_image(EXAMPLES / "blurry.png").pixels[:96, :128]
    with torch.no_grad():
        out = restore_tensor(model, _tensor(blurry), device="cpu")
    assert out.shape == (1, 3, 96, 128) and torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - _tensor(blurry)).abs().mean()) > 1e-4  # it did something


def test_quick_start_restores_the_example_into_a_sharper_file(tmp_path):
    out = tmp_path / "restored.png"
    result = CliRunner().invoke(
        app, ["restore", str(EXAMPLES / "blurry.png"), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"].startswith(default_model_name())
    restored = _tensor(read_image(out).pixels)
    blurry = _tensor(read_image(EXAMPLES / "blurry.png").pixels)
    sharp = _tensor(read_image(EXAMPLES / "sharp.png").pixels)
    assert restored.shape == sharp.shape
    assert float(psnr(restored, sharp)) > float(psnr(blurry, sharp)) + 0.1
