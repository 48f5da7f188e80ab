"""Helpers for the weights tests: real tiny checkpoints and manifests written to disk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from deblurcli.archs import create, get_spec
from deblurcli.weights import save_checkpoint
from deblurcli.weights.manifest import toml_value

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "deblurcli-tests/tiny-weights"


def tiny_checkpoint(path: Path, arch: str = "simplecnn", half: bool = True):
    """A real safetensors checkpoint of a tiny ``arch``; returns (model, file bytes)."""
    model = create(arch, **get_spec(arch).tiny_config).eval()
    save_checkpoint(model, path, half=half, metadata={"trained_on": "nothing (test)"})
    return model, path.read_bytes()


def entry_for(name: str, data: bytes, file: str, **extra: Any) -> dict[str, Any]:
    """A manifest entry describing ``data`` (sha256 and size computed from the bytes)."""
    return {
        "name": name,
        "arch": name.split(".")[0],
        "file": file,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "license": "MIT",
        **extra,
    }


def write_manifest(
    path: Path, entries: list[dict[str, Any]], default: str | None = None, **top: Any
) -> Path:
    """Write a manifest TOML file with ``entries`` as [[model]] tables."""
    lines = [f"schema_version = {top.pop('schema_version', 1)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items()]
    if default is not None:
        lines.append(f"default = {toml_value(default)}")
    for e in entries:
        lines.append("\n[[model]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in e.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
