"""``deblur restore``: deblur photos and folders with tiled inference (issue #4)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from deblurcli.cli._common import ArchOption, err_console, friendly_errors, is_tty, say
from deblurcli.inference.batch import Job, Reporter, RestoreSummary
from deblurcli.inference.batch import restore as restore_files
from deblurcli.inference.engine import parse_tile


class _RichReporter(Reporter):
    """A progress bar over images (with MP/s of the finished ones), plus one over tiles while
    a big image is tiled."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.images = progress.add_task("images", total=0, rate="")
        self.tile_task: int | None = None
        self.megapixels = 0.0
        self.started = time.perf_counter()

    def start(self, total: int) -> None:
        self.started = time.perf_counter()
        self.progress.update(self.images, total=total)

    def file_started(self, job: Job) -> None:
        self.progress.update(self.images, description=job.source.name)

    def tiles(self, done: int, total: int) -> None:
        if total <= 1:
            return
        if self.tile_task is None:
            self.tile_task = self.progress.add_task("  tiles", total=total, rate="")
        self.progress.update(self.tile_task, completed=done, total=total)
        if done >= total:
            self.progress.remove_task(self.tile_task)
            self.tile_task = None

    def file_finished(self, job: Job, status: str, megapixels: float = 0.0) -> None:
        self.megapixels += megapixels
        elapsed = time.perf_counter() - self.started
        rate = f"{self.megapixels / elapsed:.2f} MP/s" if self.megapixels and elapsed > 0 else ""
        self.progress.update(self.images, advance=1, rate=rate)


def _progress_bar(console: Console, enabled: bool) -> Progress:
    """Images done, elapsed and remaining time, and the MP/s of the finished images."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
        console=console,
        disable=not enabled,
        transient=True,
    )


def _print_summary(summary: RestoreSummary) -> None:
    for path, reason in summary.failed:
        say(f"[bold red]failed:[/] {path}: {reason}", err=True)
    rank = f"rank {summary.rank}/{summary.world_size}: " if summary.world_size > 1 else ""
    line = f"{rank}{len(summary.done)} done, {len(summary.skipped)} skipped, "
    line += f"{len(summary.failed)} failed"
    if summary.done:
        line += (
            f"; {summary.megapixels:.2f} MP in {summary.seconds:.1f} s "
            f"({summary.megapixels_per_second:.3f} MP/s)"
        )
    if summary.model:
        line += f" with {summary.model} on {summary.device}, {summary.precision}"
    if summary.done or summary.skipped:
        line += f" → {summary.output or 'next to each input'}"
    say(line)


@friendly_errors
def restore(
    inputs: list[str] = typer.Argument(
        ..., help="Image files, folders or globs.", show_default=False, metavar="INPUT"
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model: manifest name, checkpoint path, hf://owner/repo, or a classical method: "
        "unsharp, wiener or richardson-lucy (the last two with --kernel).",
        show_default="the default pretrained model",
    ),
    kernel: Path | None = typer.Option(
        None,
        "--kernel",
        help="The blur kernel (.npy, e.g. from 'deblur blur' OUT/kernels/) for --model wiener "
        "or richardson-lucy.",
    ),
    arch: str | None = ArchOption,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output folder (or file, for one input file)."
    ),
    suffix: str | None = typer.Option(
        None,
        help="Added to output names.",
        show_default="_deblurred next to the input, none with -o",
    ),
    tile: str = typer.Option(
        "auto", help="Tile side in pixels (64 or more), 'auto' (fit memory) or 0 (whole image)."
    ),
    tile_overlap: int | None = typer.Option(
        None, min=0, help="Tile overlap in pixels.", show_default="the architecture's"
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", help="auto, fp32, fp16 or bf16 (half only if safe)."),
    batch_size: int = typer.Option(1, min=1, help="Tiles per forward pass."),
    threads: int | None = typer.Option(
        None, min=1, help="CPU threads for the model.", show_default="one per physical core"
    ),
    side_by_side: bool = typer.Option(
        False, "--side-by-side", help="Write input and result side by side."
    ),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into subfolders."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist."),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help="Output format: png, jpeg, tiff, webp or bmp.",
        show_default="the input's",
    ),
    max_pixels: int | None = typer.Option(
        None, min=0, help="Raise Pillow's decompression-bomb limit to this many pixels (0 = none)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Deblur photos, folders or globs with a pretrained model or a checkpoint.

    Tiled so any size fits in memory; CUDA when available, else MPS, else the CPU. Under
    `torchrun --nproc_per_node=N -m deblurcli restore ...` each process does its share.
    """
    options = dict(
        suffix=suffix, fmt=fmt, recursive=recursive, overwrite=overwrite,
        side_by_side=side_by_side, tile=parse_tile(tile), tile_overlap=tile_overlap,
        device=device, precision=precision, batch_size=batch_size, max_pixels=max_pixels,
        arch=arch, kernel=kernel,
        threads=threads,
    )  # fmt: skip
    progress = _progress_bar(err_console, enabled=not as_json and is_tty())
    with progress:
        summary = restore_files(inputs, model, output, reporter=_RichReporter(progress), **options)
    if as_json:
        typer.echo(json.dumps(summary.to_dict()))  # one line per process, even under torchrun
    else:
        _print_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)
