"""``deblur blur``: synthesize a paired blurred dataset (issue #3)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from deblurcli.cli._common import err_console, fail, friendly_errors, say
from deblurcli.degradations import (
    KINDS,
    BlurEvent,
    BlurSummary,
    DegradeOptions,
    Geometry,
    parse_range,
    synthesize_dataset,
)
from deblurcli.errors import UsageError


def _default(name: str) -> str:
    lo, hi = getattr(DegradeOptions(), name)
    return f"{lo:g}:{hi:g}"


def _range(text: str | None, option: str, cast: type = float) -> tuple | None:
    if text is None:
        return None
    try:
        return parse_range(text, cast)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--resize: expected WxH such as 256x256, got {text!r}") from None
    return w, h


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    return i, n


def build_options(
    kind: str,
    sigma: str | None,
    motion_length: str | None,
    radius: str | None,
    noise_sigma: str | None,
    noise_type: str,
    jpeg_quality: str | None,
) -> DegradeOptions:
    """DegradeOptions from the CLI's range strings (unset ranges keep their defaults)."""
    values: dict[str, object] = {}
    for name, text, option in (
        ("gaussian_sigma", sigma, "--sigma"),
        ("motion_length", motion_length, "--motion-length"),
        ("defocus_radius", radius, "--radius"),
        ("noise_sigma", noise_sigma, "--noise-sigma"),
    ):
        parsed = _range(text, option)
        if parsed is not None:
            values[name] = parsed
    if motion_length is not None:
        values["linear_length"] = values["motion_length"]
    if kind == "camera" and (noise_sigma is not None or noise_type != "both"):
        raise UsageError(
            "--noise-sigma/--noise-type do not apply to --kind camera, which draws sensor "
            "noise of its own (see docs/blur.md)"
        )
    if noise_sigma is not None and kind not in ("noise", "mix"):
        values["noise_prob"] = 1.0  # asked for noise on top of the blur: every image gets it
    values["noise_types"] = ("gaussian", "poisson") if noise_type == "both" else (noise_type,)
    if jpeg_quality is not None:
        values["jpeg_quality"] = _range(jpeg_quality, "--jpeg-quality", int)
    try:
        return DegradeOptions(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@friendly_errors
def blur(
    source: Path = typer.Argument(..., help="Folder of sharp images (searched recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="Dataset folder to write."),
    kind: str = typer.Option("mix", "--kind", "-k", help=f"One of: {', '.join(KINDS)}."),
    seed: int = typer.Option(0, "--seed", help="Run seed; same seed + inputs = same bytes."),
    workers: int | None = typer.Option(
        None, "--workers", "-j", min=1, help="Processes (default: all cores)."
    ),
    resize: str | None = typer.Option(None, "--resize", help="Resize both images to WxH."),
    crop: int | None = typer.Option(None, "--crop", help="Centre-crop both images to NxN."),
    sigma: str | None = typer.Option(
        None, "--sigma", help=f"Gaussian sigma px, A or A:B (default {_default('gaussian_sigma')})."
    ),
    motion_length: str | None = typer.Option(
        None,
        "--motion-length",
        help=f"Motion path length px, A or A:B (default {_default('motion_length')}).",
    ),
    radius: str | None = typer.Option(
        None,
        "--radius",
        help=f"Defocus disk radius px, A or A:B (default {_default('defocus_radius')}).",
    ),
    noise_sigma: str | None = typer.Option(
        None,
        "--noise-sigma",
        help=f"Noise std in [0,1] units, A or A:B (default {_default('noise_sigma')}); "
        "adds noise to blur kinds.",
    ),
    noise_type: str = typer.Option(
        "both", "--noise-type", help="gaussian, poisson or both (drawn per image)."
    ),
    jpeg_quality: str | None = typer.Option(
        None, "--jpeg-quality", help="JPEG-compress the blurred image, quality A or A:B."
    ),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Only the first N images."),
    shard: str | None = typer.Option(
        None, "--shard", help="i/n: this machine's share (0 <= i < n) of a split run."
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help="Output format: png, jpg or webp (WebP lossless). Sharp copies are never "
        "re-encoded as JPEG: they are copied as is or written as PNG.",
        show_default="each source's",
    ),
    max_pixels: int | None = typer.Option(
        None,
        "--max-pixels",
        min=0,
        help="Raise Pillow's decompression-bomb limit to this many pixels (0 = none).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images already done."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Synthesize paired sharp/ and blurred/ folders from sharp photos, reproducibly.

    Kinds: motion (random camera-shake trajectories, some linear), gaussian, defocus, noise,
    camera (spatially varying handheld shake in linear light, saturated highlights, sensor
    noise, JPEG), mix (per image: camera 37.5%, motion 25%, gaussian 18.75%, defocus and
    linear motion 9.4% each; the kernel blurs get noise 30% and JPEG 20% of the time). Every
    parameter is recorded in OUT/manifest.jsonl and each kernel (for camera: the one at the
    image centre) in OUT/kernels/<path>.npy. Re-running resumes; RGBA images blur RGB, keep
    alpha. Blurred JPEGs are written at quality 95 (recorded per image).
    """
    if kind not in KINDS:
        raise UsageError(f"unknown --kind {kind!r}; choose from {', '.join(KINDS)}")
    if noise_type not in ("gaussian", "poisson", "both"):
        raise UsageError("--noise-type must be gaussian, poisson or both")
    options = build_options(
        kind, sigma, motion_length, radius, noise_sigma, noise_type, jpeg_quality
    )
    geometry = Geometry(resize=_size(resize), crop=crop)
    summary = _run_with_progress(
        source,
        output,
        kind,
        seed=seed,
        options=options,
        geometry=geometry,
        workers=workers,
        shard=_shard(shard),
        limit=limit,
        overwrite=overwrite,
        fmt=fmt.lower().replace("jpeg", "jpg") if fmt else None,
        max_pixels=max_pixels,
    )
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        say(
            f"{summary.written} written, {len(summary.skipped)} already done, "
            f"{len(summary.failed)} failed in {summary.seconds:.1f}s → {summary.out} "
            f"(manifest {summary.manifest.name})"
        )
    if summary.failed:
        fail(f"{len(summary.failed)} of {summary.total} images failed (listed above)", 1)


def _run_with_progress(source: Path, output: Path, kind: str, **kwargs: object) -> BlurSummary:
    def report_failure(event: BlurEvent) -> None:
        if event.status == "failed":
            # through the progress bar's console, so the line lands above the bar
            err_console.print(
                f"[yellow]skipped:[/] {event.message}", highlight=False, soft_wrap=True
            )

    if not err_console.is_terminal:
        return synthesize_dataset(source, output, kind, progress=report_failure, **kwargs)
    columns = (
        TextColumn("blur"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("blur", total=None, last="")

        def update(event: BlurEvent) -> None:
            report_failure(event)
            bar.update(task, completed=event.done, total=event.total, last=event.rel)

        return synthesize_dataset(source, output, kind, progress=update, **kwargs)
