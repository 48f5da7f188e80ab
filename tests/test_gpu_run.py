"""The one-command GPU training run, rehearsed on the CPU as the device machine would see it.

The device machine gets a copy of the working tree (tracked and untracked-but-not-ignored
files) plus a few carried folders, 64 MiB in all, runs with ``PYTHONPATH=.`` and no installed
package, and gives back at most 8 files of 16 MiB. The rehearsal copies the tree the same
way, carries packed photos, trains all six archs (tiny widths) for a fraction of a minute,
and checks what comes back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deblurcli.data import photo_pool
from deblurcli.imageio import ImageData, read_image, write_image
from deblurcli.inference import restore_tensor
from deblurcli.pretraining.cohort_run import return_limit_problems
from deblurcli.weights import load_model
from deblurcli.weights.bundle import read_bundle_index, unpack_bundle
from tests.conftest import natural_image

REPO = Path(__file__).resolve().parent.parent
CARRY_LIMIT = 64 * 2**20
PHOTOS_BYTES = 13 * 2**20  # the packed photo pool measured 12.6 MB (lossless WebP)


def _tree_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (the device tool copies what git tracks)")
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def test_the_tree_leaves_room_for_the_packed_photos() -> None:
    tree = sum((REPO / f).stat().st_size for f in _tree_files())
    assert tree + PHOTOS_BYTES <= CARRY_LIMIT, f"working tree {tree / 2**20:.1f} MiB"


def test_pack_keeps_the_pixels(tmp_path: Path) -> None:
    root = _prepared_pool(tmp_path / "pool")
    sizes = photo_pool.pack(tmp_path / "packed", root)
    assert set(sizes) == {"train", "val"} and all(sizes.values())
    for png in (root / "prepared" / "train").glob("*.png"):
        webp = tmp_path / "packed" / "train" / f"{png.stem}.webp"
        assert (read_image(webp).pixels == read_image(png).pixels).all()


def test_return_limits_are_checked(tmp_path: Path) -> None:
    for i in range(9):
        (tmp_path / f"f{i}").write_bytes(b"x")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep").write_bytes(b"x")
    problems = return_limit_problems(tmp_path)
    assert any("files" in p for p in problems)
    assert any("deeper" in p for p in problems)


def _prepared_pool(root: Path) -> Path:
    for split, count in (("train", 4), ("val", 2)):
        folder = root / "prepared" / split
        folder.mkdir(parents=True)
        for i in range(count):
            image = natural_image(192, 224, seed=10 * count + i)
            write_image(folder / f"{split}{i}.png", ImageData(image))
    return root


def test_gpu_run_rehearsal_on_cpu(tmp_path: Path) -> None:
    clone = tmp_path / "tree"
    for name in _tree_files():
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    photo_pool.pack(clone / "carry" / "photos", _prepared_pool(tmp_path / "pool"))
    out = tmp_path / "out"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": ".",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "scripts/train_pretrained.py",
        "--minutes",
        "5",  # a budget the round cap ends first: the test does not depend on machine speed
        "--max-rounds",
        "3",
        "--width",
        "tiny",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--batch-size",
        "8",
        "--checkpoint-minutes",
        "0.1",
        "--photos",
        "carry/photos",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert f"deblurcli from {clone / 'deblurcli'}" in log  # the copied tree, not an install
    assert return_limit_problems(out) == []
    index = read_bundle_index(out)
    figures = index["figures"]
    assert sorted(figures) == sorted(index["models"])
    assert len(figures) == 6
    for arch, fig in figures.items():
        assert fig["error"] is None, arch
        assert fig["step"] == 3 and fig["patches"] == 3 * 8
    assert (out / "metrics.csv").read_text().startswith("arch,step")
    assert index["stages"][0] == {"blur": "gaussian", "from_round": 0}  # the plan's curriculum
    image = natural_image(64, 80)
    for arch, path in unpack_bundle(out, tmp_path / "unpacked").items():
        model = load_model(path)
        assert model.arch_name == arch
        x = torch.from_numpy(image.transpose(2, 0, 1).copy())
        assert restore_tensor(model, x, device="cpu").shape == x.shape
