"""Resolve ``--model`` values to a loaded model (manifest names and the Hub land with #5)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from deblurcli.errors import CheckpointError
from deblurcli.weights.checkpoint import load_checkpoint


def load_model(name_or_path: str | os.PathLike[str]) -> nn.Module:
    """Load a checkpoint by path (a ``model.safetensors`` or a run folder containing one)."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.exists():
        return load_checkpoint(path)
    raise CheckpointError(
        f"{name_or_path}: no such checkpoint, and no pretrained weights are available yet; "
        "pass a model.safetensors written by 'deblur train'"
    )
