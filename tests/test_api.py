"""The scripted API the README promises is importable from the package top level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import deblurcli

REPO = Path(__file__).resolve().parents[1]


def test_top_level_api_names_resolve() -> None:
    for name in deblurcli.__all__:
        assert callable(getattr(deblurcli, name)), name
    from deblurcli import TrainConfig, load_model, restore, train  # noqa: F401


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        deblurcli.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_photo_pool_and_hashing_do_not_import_torch() -> None:
    # The photo pool only hashes and resizes files: importing it must not cost a torch start-up.
    code = (
        "import sys, deblurcli.data.photo_pool, deblurcli._hashing, deblurcli._toml\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "False", out.stderr


def test_weights_reexports_the_one_sha256_file() -> None:
    from deblurcli._hashing import sha256_file
    from deblurcli.weights import sha256_file as reexported

    assert reexported is sha256_file
