"""Resolve a ``--model`` value to a weights file and a loaded model.

A value is a local path (a checkpoint file, or a run folder holding ``model.safetensors``),
a manifest name (``arch`` or ``arch.tag``), or ``hf://owner/repo[/file][@revision]``.
A manifest entry is looked for, in order, in the package (``pretrained/``), in the Hugging
Face cache, and finally downloaded at its pinned revision. Every file resolved through the
manifest is sha256-checked; a corrupt cache entry is downloaded again once.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deblurcli._hashing import sha256_file
from deblurcli.archs import get_spec, model_config
from deblurcli.errors import CheckpointError, ChecksumError, WeightsUnavailableError
from deblurcli.weights import hub
from deblurcli.weights.checkpoint import ARCH_KEY, load_checkpoint, read_metadata
from deblurcli.weights.manifest import (
    ManifestLike,
    PretrainedEntry,
    as_manifest,
    default_model_name,
    find_pretrained,
    get_pretrained,
)
from deblurcli.weights.zoo import load_external

HF_PREFIX = "hf://"
DEFAULT_HUB_FILE = "model.safetensors"
_HF_URI = re.compile(
    r"hf://(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:/(?P<file>[^@]+))?(?:@(?P<rev>[\w./-]+))?"
)
_CHECKPOINT_SUFFIXES = {".safetensors", ".pth", ".pt", ".bin"}


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://owner/repo[/file][@revision]``."""

    repo_id: str
    filename: str = DEFAULT_HUB_FILE
    revision: str = "main"


def parse_hf_uri(value: str) -> HubRef:
    """Parse ``hf://owner/repo[/file][@revision]``; a bad one is a one-line error."""
    m = _HF_URI.fullmatch(value)
    file = m and m["file"]
    if m is None or (file and any(p in {"", ".", ".."} for p in file.split("/"))):
        raise CheckpointError(
            f"{value}: expected hf://owner/repo[/path/to/file.safetensors][@revision]"
        )
    return HubRef(m["repo"], file or DEFAULT_HUB_FILE, m["rev"] or "main")


def verify_file(path: Path, entry: PretrainedEntry) -> bool:
    """True when ``path`` has the size and sha256 the manifest gives for ``entry``."""
    return path.stat().st_size == entry.size and sha256_file(path) == entry.sha256


def _checksum_error(
    entry: PretrainedEntry, path: Path, fix: str, mentions: tuple[str, ...] = ()
) -> ChecksumError:
    return ChecksumError(
        f"{path}: sha256 does not match the manifest for '{entry.name}' "
        f"(expected {entry.sha256[:12]}…, {entry.size} bytes); {fix}",
        mentions=mentions,
    )


def local_weights(entry: PretrainedEntry) -> Path | None:
    """Where ``entry``'s file already is (package, then Hub cache), without any network."""
    if entry.package_path.is_file():
        return entry.package_path
    if entry.hub_repo and entry.revision:
        return hub.cached_file(entry.hub_repo, entry.file, entry.revision)
    return None


def fetch_weights(entry: PretrainedEntry, *, verify: bool = True) -> Path:
    """The checked local path of ``entry``: package file, else Hub cache, else download."""
    if entry.package_path.is_file():
        if verify and not verify_file(entry.package_path, entry):
            raise _checksum_error(entry, entry.package_path, "reinstall deblurcli")
        return entry.package_path
    if not (entry.hub_repo and entry.revision):
        raise WeightsUnavailableError(
            f"'{entry.name}': {entry.file} is not shipped with this install and not published "
            "on the Hub yet; pass {model} PATH to a local checkpoint",
            mentions=("model",),
        )
    path = hub.cached_file(entry.hub_repo, entry.file, entry.revision) or hub.download(
        entry.hub_repo, entry.file, entry.revision, name=entry.name
    )
    if not verify or verify_file(path, entry):
        return path
    if hub.is_offline():
        raise _checksum_error(
            entry,
            path,
            "the cached copy is corrupt: unset HF_HUB_OFFLINE and run "
            f"'deblur weights download {entry.name}' to fetch it again",
        )
    # A cache entry can be damaged on disk (interrupted copy, bit rot): fetch it again once.
    path = hub.download(entry.hub_repo, entry.file, entry.revision, force=True, name=entry.name)
    if not verify_file(path, entry):
        raise _checksum_error(
            entry,
            path,
            f"the file at {entry.hub_url} differs from the manifest: report it and "
            "pass {model} PATH meanwhile",
            mentions=("model",),
        )
    return path


def _manifest_entry_for(ref: HubRef, manifest: ManifestLike) -> PretrainedEntry | None:
    for e in as_manifest(manifest).entries:
        if (e.hub_repo, e.file, e.revision) == (ref.repo_id, ref.filename, ref.revision):
            return e
    return None


def _resolve(
    value: str | os.PathLike[str] | None, manifest: ManifestLike, verify: bool
) -> tuple[Path, PretrainedEntry | None, HubRef | None]:
    if value is None:
        value = default_model_name(manifest)
        if value is None:
            raise WeightsUnavailableError(
                "no pretrained weights are available yet; pass {model} PATH to a "
                "model.safetensors written by 'deblur train'",
                mentions=("model",),
            )
    text = os.fspath(value)
    if isinstance(value, str) and text.startswith(HF_PREFIX):
        ref = parse_hf_uri(text)
        entry = _manifest_entry_for(ref, manifest)
        if entry is not None:
            return fetch_weights(entry, verify=verify), entry, ref
        return hub.download(ref.repo_id, ref.filename, ref.revision), None, ref
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if path.exists():
        return path, None, None
    entry = find_pretrained(text, manifest) if isinstance(value, str) else None
    if entry is not None:
        return fetch_weights(entry, verify=verify), entry, None
    looks_like_path = "/" in text or os.sep in text or path.suffix in _CHECKPOINT_SUFFIXES
    if isinstance(value, str) and not looks_like_path:
        get_pretrained(text, manifest)  # raises the "unknown name" error with the known names
    raise CheckpointError(
        f"{text}: no such checkpoint file"
        + ("" if as_manifest(manifest).entries else ", and no pretrained weights are available yet")
        + "; pass a model.safetensors written by 'deblur train' or a pretrained model name"
    )


def resolve_weights(
    value: str | os.PathLike[str] | None = None,
    *,
    manifest: ManifestLike = None,
    verify: bool = True,
) -> Path:
    """The local weights file ``value`` names (downloading it if needed)."""
    return _resolve(value, manifest, verify)[0]


def _sidecar_config(path: Path, ref: HubRef | None) -> dict[str, Any] | None:
    """``config.json`` beside a checkpoint without deblurcli metadata (the Hub convention)."""
    beside = path.with_name("config.json")
    if not beside.is_file() and ref is not None and not hub.is_offline():
        folder = ref.filename.rpartition("/")[0]
        name = f"{folder}/config.json" if folder else "config.json"
        try:
            beside = hub.download(ref.repo_id, name, ref.revision)
        except WeightsUnavailableError:
            return None
    if not beside.is_file():
        return None
    try:
        data = json.loads(beside.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{beside}: not readable JSON ({exc})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("arch"), str)
        or not isinstance(data.get("config", {}), dict)
    ):
        raise CheckpointError(f'{beside}: expected {{"arch": NAME, "config": {{...}}}}')
    return data


def _load(
    path: Path, entry: PretrainedEntry | None, ref: HubRef | None, arch: str | None = None
) -> nn.Module:
    config: dict[str, Any] | None = None
    legacy = path.suffix in {".pth", ".pt"}
    if not (legacy or ARCH_KEY not in read_metadata(path)):
        arch = None  # the file says what it is
    elif entry is not None:
        arch, config = entry.arch, entry.config
    elif arch is None and (side := _sidecar_config(path, ref)) is not None:
        arch, config = side["arch"], dict(side.get("config") or {})
    elif arch is None and path.suffix in {".pth", ".safetensors"}:
        return load_external(path)  # a published checkpoint, recognised by spandrel
    model = load_checkpoint(path, arch=arch, config=config)
    if entry is not None:
        _check_matches_entry(path, model, entry)
        # The manifest's verdict on these weights in CPU bf16; the precision policy
        # (deblurcli.inference.device.CPU_BF16_ATTR) runs a model without one in fp32.
        model.cpu_bf16 = entry.cpu_bf16
    return model


def _check_matches_entry(path: Path, model: nn.Module, entry: PretrainedEntry) -> None:
    if model.arch_name != entry.arch:
        raise CheckpointError(
            f"{path}: holds a {model.arch_name} model but the manifest says '{entry.name}' is "
            f"a {entry.arch}"
        )
    loaded = model.arch_config
    differ = sorted(
        k for k, v in model_config(entry.arch, entry.config).items() if loaded.get(k) != v
    )
    if differ:
        raise CheckpointError(
            f"{path}: its config differs from the manifest's for '{entry.name}' "
            f"({', '.join(differ)})"
        )


@dataclass(frozen=True)
class ResolvedModel:
    """A model loaded from ``--model`` and where its weights came from."""

    model: nn.Module
    path: Path
    entry: PretrainedEntry | None  # the manifest entry, when resolved through the manifest

    def sha256(self) -> str:
        """The sha256 of the weights file (read again: the file as it is now)."""
        return sha256_file(self.path)


def resolve_model(
    value: str | os.PathLike[str] | None = None,
    *,
    manifest: ManifestLike = None,
    verify: bool = True,
    arch: str | None = None,
) -> ResolvedModel:
    """Like :func:`load_model` (fp32, eval mode, on the CPU), keeping the file it came from."""
    if arch is not None:
        get_spec(arch)  # an unknown --arch is a usage error even for a file that needs none
    path, entry, ref = _resolve(value, manifest, verify)
    return ResolvedModel(_load(path, entry, ref, arch).eval(), path, entry)


def load_model(
    value: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    manifest: ManifestLike = None,
    verify: bool = True,
    arch: str | None = None,
) -> nn.Module:
    """Load the model ``value`` names, in eval mode on ``device``.

    ``value`` is a manifest name (``arch`` or ``arch.tag``), a local checkpoint path (or run
    folder), or ``hf://owner/repo[/file][@rev]``; None means the manifest's default model.
    ``arch`` names the architecture of a file that does not say (``.pth``, bare safetensors).
    """
    return resolve_model(value, manifest=manifest, verify=verify, arch=arch).model.to(device)
