"""The ``deblur`` command: a thin Typer layer over the Python API."""

from __future__ import annotations

import logging
from typing import Any

import typer
import typer.core

from deblurcli.cli import blur, data, evaluate, export, models, restore, train, weights
from deblurcli.cli._common import CONTEXT_SETTINGS, flag_naming


class _Group(typer.core.TyperGroup):
    """Adds a hint when an unknown "option" is really a file name that starts with '-'."""

    def invoke(self, ctx: Any) -> Any:
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except Exception as exc:  # click's NoSuchOption (typer may vendor its own click)
            option = getattr(exc, "option_name", None)
            names = [a for a in args if option and a.startswith(option) and "." in a]
            if type(exc).__name__ == "NoSuchOption" and names:
                exc.message += (  # type: ignore[attr-defined]
                    f" (a file named {names[0]}? write ./{names[0]}, or put -- before file names)"
                )
            raise


app = typer.Typer(
    name="deblur",
    cls=_Group,
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
app.command("export")(export.export)
app.add_typer(weights.app, name="weights")
app.add_typer(data.app, name="data")


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(flag_naming)
    app()
