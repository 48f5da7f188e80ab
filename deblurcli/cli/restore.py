"""``deblur restore``: deblur photos and folders with tiled inference (issue #4)."""

from __future__ import annotations

import typer

from deblurcli.cli._common import friendly_errors, pending


@friendly_errors
def restore(ctx: typer.Context) -> None:
    """Deblur photos, folders or globs with a pretrained model or a checkpoint.

    Tiled so any size fits in memory; CUDA when available, else the CPU.
    """
    pending("restore", 4)
