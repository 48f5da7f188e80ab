"""``deblur weights``: list, download, verify and locate pretrained weights (issue #5)."""

from __future__ import annotations

import typer

from deblurcli.cli._common import PENDING_CONTEXT, friendly_errors, pending

app = typer.Typer(
    help="Pretrained weights: list, download, verify and locate them.",
    no_args_is_help=True,
)


@app.command("list", context_settings=PENDING_CONTEXT)
@friendly_errors
def list_weights(ctx: typer.Context) -> None:
    """List pretrained models: name, arch, size, available locally, benchmark scores."""
    pending("weights list", 5)


@app.command("download", context_settings=PENDING_CONTEXT)
@friendly_errors
def download(ctx: typer.Context) -> None:
    """Download NAME (or --all) into the Hugging Face cache, checking sha256."""
    pending("weights download", 5)


@app.command("verify", context_settings=PENDING_CONTEXT)
@friendly_errors
def verify(ctx: typer.Context) -> None:
    """Re-hash every locally available weights file against the manifest."""
    pending("weights verify", 5)


@app.command("path", context_settings=PENDING_CONTEXT)
@friendly_errors
def path(ctx: typer.Context) -> None:
    """Print the local path of NAME's weights file."""
    pending("weights path", 5)
