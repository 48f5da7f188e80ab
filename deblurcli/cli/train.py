"""``deblur train``: train one of the six architectures on paired data (issue #6)."""

from __future__ import annotations

import typer

from deblurcli.cli._common import friendly_errors, pending


@friendly_errors
def train(ctx: typer.Context) -> None:
    """Train an architecture (--arch NAME) on sharp/blurred pairs with its paper's recipe.

    Writes RUN/model.safetensors, loadable by 'deblur restore --model' and 'deblur eval'.
    """
    pending("train", 6)
