"""Several checkpoints packed as a few size-capped safetensors shards, and back.

A GPU run may return only a few files of limited size (8 files of at most 16 MiB on the
device machine), and one fp16 model alone can be larger than that. A bundle is a folder
with ``bundle.json`` and ``weights-<generation>-<i>.safetensors`` shards: every tensor is
stored under ``<model>/<key>`` and each model's safetensors metadata goes into the index.
Shards are written before the index that names them and the previous generation is deleted
after it, so a bundle rewritten every few minutes is never left half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from deblurcli.errors import CheckpointError
from deblurcli.imageio import atomic_path, atomic_write_bytes

INDEX = "bundle.json"
FORMAT = "deblurcli-bundle/1"
MAX_SHARD_BYTES = 15 * 2**20  # under the device machine's 16 MiB per returned file


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def _plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > max_bytes:
            raise CheckpointError(f"{key}: one tensor of {nbytes} bytes is over the shard size")
        if size + nbytes > max_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def write_bundle(
    models: dict[str, Path],
    folder: Path,
    *,
    half: bool = True,
    extra: dict[str, Any] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> list[Path]:
    """Pack the checkpoints ``models`` (name → safetensors file) into ``folder``.

    ``half`` stores floating tensors as fp16; ``extra`` goes into the index as it is (run
    figures). Returns the files of the bundle (shards, then the index).
    """
    folder.mkdir(parents=True, exist_ok=True)
    previous = _read_index(folder) if (folder / INDEX).is_file() else {}
    generation = int(previous.get("generation", -1)) + 1
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for name, path in models.items():
        state, metadata = _tensors(path)
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        tensors.update({f"{name}/{k}": v.contiguous() for k, v in state.items()})
        entries[name] = {"metadata": metadata, "keys": list(state)}
    files = []
    for i, shard in enumerate(_plan_shards(tensors, max_shard_bytes)):
        target = folder / f"weights-{generation}-{i}.safetensors"
        with atomic_path(target) as tmp:
            save_file(shard, tmp, metadata={"format": FORMAT})
        files.append(target)
        for key in shard:
            name = key.split("/", 1)[0]
            entries[name].setdefault("shards", [])
            if target.name not in entries[name]["shards"]:
                entries[name]["shards"].append(target.name)
    index = {"format": FORMAT, "generation": generation, "models": entries, **(extra or {})}
    atomic_write_bytes(folder / INDEX, json.dumps(index, indent=1).encode())
    for old in folder.glob("weights-*.safetensors"):
        if old not in files:
            old.unlink()
    return [*files, folder / INDEX]


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: no readable {INDEX} ({exc})") from None
    if index.get("format") != FORMAT:
        raise CheckpointError(f"{folder / INDEX}: not a deblurcli bundle")
    return index


def read_bundle_index(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The bundle's index: ``models`` (name → metadata, keys, shards) and run figures."""
    return _read_index(Path(folder))


def unpack_bundle(folder: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write each model of the bundle at ``folder`` to ``out/<name>.safetensors``."""
    folder, out = Path(folder), Path(out)
    index = _read_index(folder)
    written: dict[str, Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, entry in index["models"].items():
        state: dict[str, torch.Tensor] = {}
        for shard in entry["shards"]:
            try:
                with safe_open(str(folder / shard), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118
                        owner, _, inner = key.partition("/")
                        if owner == name:
                            state[inner] = f.get_tensor(key)
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{folder / shard}: unreadable shard ({exc})") from None
        missing = set(entry["keys"]) - set(state)
        if missing:
            raise CheckpointError(f"{name}: {len(missing)} tensor(s) missing from the bundle")
        target = out / f"{name}.safetensors"
        with atomic_path(target) as tmp:
            save_file({k: state[k] for k in entry["keys"]}, tmp, metadata=entry["metadata"])
        written[name] = target
    return written
