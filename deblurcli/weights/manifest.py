"""``weights_manifest.toml``: the list of pretrained models shipped or published."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST_PATH = Path(__file__).resolve().parent.parent / "weights_manifest.toml"


@lru_cache(maxsize=1)
def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def pretrained_archs() -> set[str]:
    """Architectures with at least one pretrained entry in the manifest."""
    return {entry["arch"] for entry in load_manifest().get("model", [])}
