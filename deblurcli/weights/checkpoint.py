"""The checkpoint format: ``model.safetensors`` that describes its own architecture.

The safetensors header metadata carries ``deblurcli.arch`` (registry name) and
``deblurcli.config`` (JSON of the full config), plus any extra string metadata (training
recipe, data, notes). So any checkpoint — shipped, trained by a user, or downloaded — loads
with :func:`load_checkpoint` without restating the architecture. Tensors may be stored as
fp16 and are loaded back as fp32. Legacy ``.pth`` files are read only with
``torch.load(weights_only=True)`` and must then be given their architecture explicitly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize
from torch import nn

from deblurcli.archs import create, get_spec, loading_config
from deblurcli.errors import CheckpointError
from deblurcli.imageio import atomic_write_bytes

ARCH_KEY = "deblurcli.arch"
CONFIG_KEY = "deblurcli.config"


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    half: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` (built by :func:`deblurcli.archs.create`) atomically to ``path``."""
    path = Path(path)
    tensors = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    meta = dict(metadata or {})
    meta[ARCH_KEY] = model.arch_name
    meta[CONFIG_KEY] = json.dumps(model.arch_config, sort_keys=True)
    # Serialized in memory, then written by our own atomic writer: a full disk is then one
    # OutputWriteError naming the file, not an opaque error from inside safetensors.
    atomic_write_bytes(path, serialize(tensors, metadata=meta))
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The safetensors header metadata of ``path`` (no tensor data is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def read_pth(path: Path) -> dict[str, Any]:
    """A ``.pth`` file's top-level dict, read with ``torch.load(weights_only=True)`` only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types; none of them is the user's bug
        raise CheckpointError(
            f"{path}: refused to load (only plain tensor state dicts are accepted from .pth; "
            f"{type(exc).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    return state


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` or (``weights_only``) ``.pth`` file, as stored."""
    return _read_tensors(path) if path.suffix == ".safetensors" else read_pth(path)


def _read_legacy_pth(path: Path) -> dict[str, torch.Tensor]:
    state = read_pth(path)
    if "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: a .pth must hold a dict of tensors")
    return state


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    config: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the model described by ``path`` and load its weights (fp32, eval mode).

    ``arch``/``config`` are needed only for legacy ``.pth`` files, which carry no metadata.
    """
    no_arch = (
        "carries no architecture; name it with {arch} NAME (e.g. 'deblur restore --arch "
        "edgenet -m FILE', and 'deblur eval --arch' likewise) or put a config.json "
        '{"arch": NAME} beside it'
    )
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix in {".pth", ".pt"}:
        if arch is None:
            raise CheckpointError(f"{path}: a .pth checkpoint {no_arch}", mentions=("arch",))
        state, config = _read_legacy_pth(path), config or {}
    else:
        meta = read_metadata(path)
        arch = arch or meta.get(ARCH_KEY)
        if arch is None:
            raise CheckpointError(
                f"{path}: no '{ARCH_KEY}' in its metadata: it {no_arch}", mentions=("arch",)
            )
        if config is None:
            config = _metadata_config(path, meta)
        state = _read_tensors(path)
    get_spec(arch)  # unknown arch → one-line error
    model = _build_for_loading(arch, config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match {arch} ({first})") from None
    return model.eval()


def _metadata_config(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """The config JSON object stored in the metadata; anything else is a one-line error."""
    try:
        config = json.loads(meta.get(CONFIG_KEY, "{}"))
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: '{CONFIG_KEY}' in its metadata is not a JSON object")
    return config


def _build_for_loading(arch: str, config: dict[str, Any]) -> nn.Module:
    try:
        return create(arch, **loading_config(arch, config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid {arch} config in checkpoint: {exc}") from None
