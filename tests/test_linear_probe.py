"""scripts/linear_probe.py: the least-squares filters and a real tiny run end to end."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import natural_image

from deblurcli.imageio import ImageData, write_image

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "linear_probe.py"


def _probe():
    spec = importlib.util.spec_from_file_location("linear_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lp = _probe()


def _log_gain(designs, flat_filter) -> float:
    """Mean PSNR gain (dB) of a filter over the identity (the centre tap) on the designs."""
    centre = designs[0][0].shape[1] // 2
    gains = [
        10 * np.log10(np.mean((rows[:, centre] - t) ** 2) / np.mean((rows @ flat_filter - t) ** 2))
        for rows, t in designs
    ]
    return float(np.mean(gains))


def test_fit_recovers_an_exact_filter():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=9)
    designs = []
    for _ in range(4):
        rows = rng.uniform(size=(200, 9))
        designs.append((rows, rows @ truth))
    fits = lp.fit_both(designs, rounds=2)
    np.testing.assert_allclose(fits["mse"], truth, atol=1e-6)
    np.testing.assert_allclose(fits["psnr"], truth, atol=1e-6)


def test_psnr_fit_has_the_better_mean_gain_on_what_it_fitted():
    photos = [natural_image(160, 160, seed=s) for s in range(3)]
    rng = np.random.default_rng(1)
    designs = [lp._design(b, s, 5) for b, s in lp._crops(photos, "gaussian", 24, rng)]
    fits = lp.fit_both(designs, rounds=3)
    # MSE pools the squared error of every patch; the reweighted fit maximises the mean of
    # per-patch log gains, so on its own data it cannot be worse by that measure.
    assert _log_gain(designs, fits["psnr"]) >= _log_gain(designs, fits["mse"]) - 1e-6
    assert _log_gain(designs, fits["mse"]) > 0  # Gaussian blur: some sharpening pays


def test_linear_probe_end_to_end(tmp_path: Path):
    for split, n in (("train", 2), ("val", 2)):
        for i in range(n):
            image = ImageData(natural_image(160, 160, seed=7 * n + i), bit_depth=8)
            write_image(tmp_path / split / f"p{i}.png", image)
    args = [str(SCRIPT), "--size", "5", "--patches", "12", "--rounds", "1"]
    args += ["--train-photos", str(tmp_path / "train"), "--val-photos", str(tmp_path / "val")]
    args += ["--benchmark-dir", str(tmp_path / "bench")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DEBLURCLI_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[2:]}
    assert set(rows) == {"mse", "psnr", "unsharp"}
    assert all(len(cells) == 4 for cells in rows.values())  # 3 families + val crops
    assert float(rows["unsharp"][0]) > 0  # unsharp sharpens the Gaussian family
