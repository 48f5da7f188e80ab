"""Shared fixtures: small real images written to disk, tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deblurcli.archs import create, get_spec
from deblurcli.weights import save_checkpoint

torch.set_num_threads(2)


def natural_image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A deterministic, photo-like RGB float image in [0, 1] (smooth shapes, edges, texture)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img += 0.35 + 0.25 * np.sin(xx / 9.0)[..., None] * np.array([1.0, 0.6, 0.3], np.float32)
    img += 0.15 * np.cos(yy / 13.0)[..., None] * np.array([0.2, 0.7, 1.0], np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(3, min(h, w) / 3))
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[mask] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


@pytest.fixture
def rgb_image() -> np.ndarray:
    return natural_image()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A loopback Hugging Face Hub (``_loopback_hub``) as ``HF_ENDPOINT``, with an empty cache."""
    from _loopback_hub import LoopbackHub

    server = LoopbackHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # A loaded test machine can starve the loopback server's thread past the 3 s default.
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "30")
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DEBLURCLI_MANIFEST"):
        monkeypatch.delenv(var, raising=False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory) -> Path:
    """A real tiny simplecnn checkpoint with random weights (seed 1), one per test module."""
    torch.manual_seed(1)
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.safetensors")
