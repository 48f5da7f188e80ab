"""Shared CLI plumbing: consoles and the one-line error policy."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from deblurcli.errors import DeblurError, Note

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
# Options every command gets: ``-h`` next to ``--help`` (inherited by subcommands).
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


# Shared by the commands that load a model file.
ArchOption = typer.Option(
    None, "--arch", help="Architecture of a checkpoint that does not name its own (a .pth file)."
)


def say(message: str, *, err: bool = False) -> None:
    """Print one line (rich markup allowed) without highlighting or hard wraps: paths stay whole."""
    (err_console if err else console).print(message, highlight=False, soft_wrap=True)


def report_skipped(problems: Iterable[str]) -> None:
    """One stderr line per input a command skipped (``PATH: why``)."""
    for line in problems:
        say(f"[yellow]skipped:[/] {line}", err=True)


def fail(message: str, code: int = 1, *, as_json: bool = False) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``.

    With ``as_json`` stdout also gets ``{"error": message, "exit_code": code}``, so a script
    reading the JSON summary always gets one JSON object.
    """
    # escape: a message may hold brackets ("pip install 'deblurcli[zoo]'", a path) that are
    # not markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps({"error": message, "exit_code": code}))
    raise typer.Exit(code)


def friendly_errors(func: F) -> F:
    """Turn user-caused errors into one line on stderr and a non-zero exit, never a traceback.

    Exit codes: 2 when the command line cannot work (:class:`~deblurcli.errors.UsageError`),
    1 when something failed while working, 130 when interrupted.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except DeblurError as exc:
            fail(exc.for_cli(), exc.exit_code, as_json=as_json)
        except KeyboardInterrupt:
            fail("interrupted", 130, as_json=as_json)
        except MemoryError:
            fail("out of memory: try a smaller --tile or --batch-size", 1, as_json=as_json)
        except OSError as exc:  # e.g. a full or read-only disk, a folder that vanished
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}", 1, as_json=as_json)
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                fail("out of memory: try a smaller --tile or --batch-size", 1, as_json=as_json)
            raise

    return wrapper  # type: ignore[return-value]


def flag_naming(record: logging.LogRecord) -> bool:
    """Logging filter: a library warning that names parameters (an ``errors.Note``, or a
    ``DeblurError`` among its arguments) names their flags on the command line."""
    if isinstance(record.msg, Note):
        record.msg = record.msg.for_cli()
    if isinstance(record.args, tuple):
        named = (Note, DeblurError)
        record.args = tuple(a.for_cli() if isinstance(a, named) else a for a in record.args)
    return True


def is_tty() -> bool:
    return sys.stderr.isatty()
