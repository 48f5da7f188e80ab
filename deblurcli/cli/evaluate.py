"""``deblur eval``: PSNR/SSIM tables, reports and the built-in benchmark (issue #7)."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.progress import Progress
from rich.table import Table

from deblurcli.cli._common import (
    ArchOption,
    console,
    err_console,
    friendly_errors,
    is_tty,
    report_skipped,
    say,
)
from deblurcli.errors import UsageError
from deblurcli.evaluation import EvalOptions, EvalResult
from deblurcli.evaluation import evaluate as run_evaluation
from deblurcli.inference.engine import parse_tile

# Exit status when some pairs could not be scored (the others were).
BAD_PAIRS_EXIT = 1


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def print_table(result: EvalResult) -> None:
    """The comparison table: models as rows, the blurry input first."""
    n = result.settings.get("pairs_scored", 0)
    table = Table(title=f"deblur eval: {n} image pairs")
    for col in ("model", "PSNR dB", "SSIM", "gain dB", "gain SSIM", "MP/s", "params"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result.rows:
        label = r.label + (" *" if r.non_blind else "")
        gain = "" if r.kind == "input" else _fmt(r.psnr_gain, "+.2f")
        sgain = "" if r.kind == "input" else _fmt(r.ssim_gain, "+.4f")
        mps = _fmt(r.mp_per_s, ".2f")
        params = f"{r.params:,}" if r.params is not None else "-"
        table.add_row(label, _fmt(r.psnr, ".2f"), _fmt(r.ssim, ".4f"), gain, sgain, mps, params)
    console.print(table)
    families = sorted({f for r in result.rows for f in r.families})
    if families:
        fam = Table(title="PSNR dB (SSIM) per family")
        fam.add_column("model")
        for f in families:
            fam.add_column(f, justify="right")
        for r in result.rows:
            cells = [
                f"{_fmt(r.families[f]['psnr'], '.2f')} ({_fmt(r.families[f]['ssim'], '.3f')})"
                if f in r.families
                else "-"
                for f in families
            ]
            fam.add_row(r.label, *cells)
        console.print(fam)
    for r in result.rows:
        if r.non_blind:
            console.print(
                f"* {r.key}: non-blind, given the true blur kernel (which the networks never "
                f"see); {r.note}",
                highlight=False,
            )


@friendly_errors
def evaluate(
    model: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Model to score: manifest name, checkpoint path, .onnx file (onnxruntime), "
        "hf://..., 'all' (every pretrained model), or a baseline: identity, unsharp, wiener. "
        "Repeat for one table.",
    ),
    arch: str | None = ArchOption,
    data: Path | None = typer.Option(
        None, "--data", help="Pairs: a 'deblur blur' output folder or a GoPro-style tree."
    ),
    sharp: Path | None = typer.Option(None, "--sharp", help="Folder of sharp images."),
    blurred: Path | None = typer.Option(None, "--blurred", help="Folder of blurred images."),
    benchmark: bool = typer.Option(
        False, "--benchmark", help="Score on the built-in benchmark (built once, then cached)."
    ),
    benchmark_photos: Path | None = typer.Option(
        None,
        "--benchmark-photos",
        help="Build the benchmark from this folder of photos instead of the held-out "
        "photo-pool split.",
    ),
    benchmark_dir: Path | None = typer.Option(
        None, "--benchmark-dir", help="Where the built benchmark is cached."
    ),
    benchmark_family: list[str] = typer.Option(
        None,
        "--benchmark-family",
        help="Benchmark families to score (repeatable): gaussian, motion, noisy (the "
        "default three) and camera (handheld shake in linear light, camera noise, JPEG).",
    ),
    crop_border: int = typer.Option(
        0, "--crop-border", min=0, help="Ignore N pixels at each edge (BasicSR)."
    ),
    y_channel: bool = typer.Option(
        False, "--y-channel", help="Score the BT.601 luma channel only (BasicSR)."
    ),
    tile: str = typer.Option("auto", "--tile", help="Tile size in pixels, 0 = whole image."),
    tile_overlap: int | None = typer.Option(
        None, "--tile-overlap", min=0, help="Pixels shared by tiles (default: the model's)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="Inference precision (fp32 by default so scores do not depend on the GPU; "
        "'auto' measures what 'deblur restore' would run).",
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write per-image CSV, JSON summary, comparison grid and plot here."
    ),
    sample: int = typer.Option(4, "--sample", min=0, help="Pairs shown in the report grid."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Score the first N pairs."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads for the models.",
        show_default="one per physical core",
    ),  # fmt: skip
    as_json: bool = typer.Option(False, "--json", help="Print the JSON summary, no table."),
) -> None:
    """Score models on sharp/blurred pairs with PSNR and SSIM, against the blurry input.

    Several --model options give one comparison table; --report DIR writes CSV, JSON and
    side-by-side pictures. Bad pairs are skipped, listed, and make the exit status 1.
    """
    if benchmark == (data is not None or sharp is not None or blurred is not None):
        raise UsageError("give exactly one of --data DIR, --sharp/--blurred, or --benchmark")
    if benchmark:
        from deblurcli.evaluation.benchmark import ensure_benchmark

        data = ensure_benchmark(benchmark_photos, benchmark_dir, benchmark_family)
    elif benchmark_photos is not None or benchmark_dir is not None or benchmark_family:
        raise UsageError(
            "--benchmark-photos, --benchmark-dir and --benchmark-family need --benchmark"
        )
    options = EvalOptions(
        crop_border=crop_border,
        y_channel=y_channel,
        tile=parse_tile(tile),
        tile_overlap=tile_overlap,
        device=device,
        precision=precision,
        limit=limit,
        sample=sample,
        arch=arch,
        threads=threads,
    )
    if report is not None:  # fail before a long scoring run, not after it
        from deblurcli.evaluation.report import prepare_report_dir

        prepare_report_dir(report)
    models = list(model) if model else [None]
    with Progress(console=err_console, transient=True, disable=not is_tty()) as bar:
        task = bar.add_task("scoring", total=None)

        def progress(index: int, total: int, name: str) -> None:
            bar.update(task, completed=index, total=total, description=name[-40:])

        result = run_evaluation(
            models, data, sharp=sharp, blurred=blurred, options=options, progress=progress
        )
    if report is not None:
        from deblurcli.evaluation.report import write_report

        write_report(result, report)
    if as_json:
        typer.echo(result.to_json())
    else:
        print_table(result)
        if report is not None:
            console.print(f"report written to {report}")
    for line in result.notes:
        say(f"[yellow]warning:[/] {line}", err=True)
    report_skipped(result.problems)
    if result.problems:
        err_console.print(
            f"[bold red]error:[/] {len(result.problems)} bad pair(s) skipped", highlight=False
        )
        raise typer.Exit(BAD_PAIRS_EXIT)
