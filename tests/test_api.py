"""The scripted API the README promises is importable from the package top level."""

from __future__ import annotations

import deblurcli


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
