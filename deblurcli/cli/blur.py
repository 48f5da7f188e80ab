"""``deblur blur``: synthesize a paired blurred dataset (issue #3)."""

from __future__ import annotations

import typer

from deblurcli.cli._common import friendly_errors, pending


@friendly_errors
def blur(ctx: typer.Context) -> None:
    """Synthesize paired sharp/ and blurred/ folders from sharp photos, reproducibly.

    Kinds: motion (random camera-shake trajectories), gaussian, defocus, noise, mix; every
    kernel and noise parameter is recorded in OUT/manifest.jsonl.
    """
    pending("blur", 3)
