"""Pair discovery over the three dataset layouts, and PSNR against scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from deblurcli.data.pairs import find_pairs
from deblurcli.errors import UsageError
from deblurcli.metrics import psnr


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_blur_layout_pairs_by_relative_path_and_reports_orphans(tmp_path: Path) -> None:
    for rel in ["a.png", "sub/b.png"]:
        _png(tmp_path / "sharp" / rel)
        _png(tmp_path / "blurred" / rel)
    _png(tmp_path / "sharp" / "only_sharp.png")
    scan = find_pairs(tmp_path)
    assert [p.name for p in scan.pairs] == ["a.png", "sub/b.png"]
    assert scan.dataset_root == tmp_path
    assert len(scan.problems) == 1 and "only_sharp.png" in scan.problems[0]


def test_same_name_with_two_extensions_keeps_both_pairs(tmp_path: Path) -> None:
    """deblur blur of a folder with a.png and a.jpg writes both; both must pair."""
    for rel, value in [("a.png", 10), ("a.jpg", 200), ("b.png", 0)]:
        _png(tmp_path / "sharp" / rel, value)
        _png(tmp_path / "blurred" / rel, value)
    scan = find_pairs(tmp_path)
    assert [p.name for p in scan.pairs] == ["a.jpg", "a.png", "b.png"]
    assert all(p.sharp.name == p.blurred.name for p in scan.pairs) and not scan.problems


def test_ambiguous_extensions_are_reported_not_dropped_silently(tmp_path: Path) -> None:
    _png(tmp_path / "s" / "x.png")
    _png(tmp_path / "s" / "x.bmp")
    _png(tmp_path / "b" / "x.jpg")
    scan = find_pairs(sharp=tmp_path / "s", blurred=tmp_path / "b")
    assert len(scan.pairs) == 1 and len(scan.problems) == 1 and "x." in scan.problems[0]


def test_two_folders_match_across_extensions(tmp_path: Path) -> None:
    _png(tmp_path / "s" / "x.png")
    _png(tmp_path / "b" / "x.jpg")
    scan = find_pairs(sharp=tmp_path / "s", blurred=tmp_path / "b")
    assert len(scan.pairs) == 1 and scan.pairs[0].blurred.suffix == ".jpg"


def test_gopro_sequences_found_recursively(tmp_path: Path) -> None:
    for seq in ["train/GOPR0001", "train/GOPR0002"]:
        for kind in ["blur", "sharp"]:
            _png(tmp_path / seq / kind / "000001.png")
    scan = find_pairs(tmp_path)
    assert [p.name for p in scan.pairs] == [
        "train/GOPR0001/000001.png",
        "train/GOPR0002/000001.png",
    ]


def test_nothing_to_pair_is_a_usage_error(tmp_path: Path) -> None:
    _png(tmp_path / "lonely.png")
    with pytest.raises(UsageError, match="no sharp/blurred pairs"):
        find_pairs(tmp_path)
    with pytest.raises(UsageError, match="not a folder"):
        find_pairs(tmp_path / "missing")


@pytest.mark.parametrize("shape", [(3, 17, 23), (1, 32, 31)])
def test_psnr_matches_skimage(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.05, shape), 0, 1)
    ours = psnr(torch.from_numpy(a)[None], torch.from_numpy(b)[None]).item()
    assert ours == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-6)
