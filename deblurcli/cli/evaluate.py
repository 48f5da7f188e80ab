"""``deblur eval``: PSNR/SSIM tables, reports and the built-in benchmark (issue #7)."""

from __future__ import annotations

import typer

from deblurcli.cli._common import friendly_errors, pending


@friendly_errors
def evaluate(ctx: typer.Context) -> None:
    """Score models on sharp/blurred pairs with PSNR and SSIM, against the blurry input.

    Several --model options give one comparison table; --report DIR writes CSV, JSON and
    side-by-side pictures.
    """
    pending("eval", 7)
