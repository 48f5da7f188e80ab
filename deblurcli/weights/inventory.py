"""What the manifest lists and what of it is on this machine (for ``deblur weights``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deblurcli.weights.manifest import ManifestLike, PretrainedEntry, as_manifest, get_pretrained
from deblurcli.weights.resolve import local_weights, verify_file


def _where(entry: PretrainedEntry, path: Path | None) -> str | None:
    if path is None:
        return None
    return "package" if path == entry.package_path else "cache"


def describe_pretrained(manifest: ManifestLike = None) -> list[dict[str, Any]]:
    """One JSON-able record per manifest entry, with where (if anywhere) it is local."""
    m = as_manifest(manifest)
    default = m.default and get_pretrained(m.default, m).name
    records = []
    for e in m.entries:
        path = local_weights(e)
        records.append(
            {
                "name": e.name,
                "arch": e.arch,
                "default_for_arch": e.default or e.name == e.arch,
                "default_model": e.name == (default or m.entries[0].name),
                "file": e.file,
                "size": e.size,
                "sha256": e.sha256,
                "license": e.license,
                "dataset": e.dataset,
                "config": e.config,
                "recipe": e.recipe,
                "description": e.description,
                "scores": e.scores,
                "benchmark": e.benchmark,
                "hub": e.hub_url,
                "local": _where(e, path),
                "path": str(path) if path else None,
            }
        )
    return records


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of re-hashing one entry's local file."""

    name: str
    path: Path | None
    status: str  # "ok", "mismatch" or "missing"


def verify_local(
    manifest: ManifestLike = None, names: list[str] | None = None
) -> list[VerifyResult]:
    """Re-hash every local copy (package or Hub cache) of the entries ``names`` (default: all)."""
    m = as_manifest(manifest)
    entries = [get_pretrained(n, m) for n in names] if names else list(m.entries)
    results = []
    for e in entries:
        path = local_weights(e)
        status = "missing" if path is None else "ok" if verify_file(path, e) else "mismatch"
        results.append(VerifyResult(e.name, path, status))
    return results
