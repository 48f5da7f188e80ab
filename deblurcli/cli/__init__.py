"""The ``deblur`` command: a thin Typer layer over the Python API."""

from __future__ import annotations

import logging

import typer

from deblurcli.cli import blur, data, evaluate, models, restore, train, weights
from deblurcli.cli._common import CONTEXT_SETTINGS

app = typer.Typer(
    name="deblur",
    help="Deblur photos, synthesize blurred datasets, train and evaluate deblurring models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT_SETTINGS,
)


def _print_version(value: bool) -> None:
    if value:
        from deblurcli import __version__

        typer.echo(f"deblur {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Deblur photos, synthesize blurred datasets, train and evaluate deblurring models."""


app.command("blur")(blur.blur)
app.command("train")(train.train)
app.command("eval")(evaluate.evaluate)
app.command("restore")(restore.restore)
app.command("models")(models.models)
app.add_typer(weights.app, name="weights")
app.add_typer(data.app, name="data")


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    app()
