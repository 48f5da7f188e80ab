"""``--report DIR``: per-image CSV, JSON summary, a labelled comparison grid and a gain plot.

Figures are drawn with matplotlib's Agg canvas directly (no global backend switch, no
display needed). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from deblurcli.errors import DeblurError, UsageError
from deblurcli.evaluation.runner import INPUT_KEY, EvalResult, SampleImages
from deblurcli.imageio import atomic_path, atomic_write_bytes

CSV_NAME = "per_image.csv"
SUMMARY_NAME = "summary.json"
GRID_NAME = "comparison.png"
GAIN_PLOT_NAME = "psnr_gain.png"
REPORT_FILES = (CSV_NAME, SUMMARY_NAME, GRID_NAME, GAIN_PLOT_NAME)
CSV_FIELDS = ("image", "family", "model", "psnr", "ssim", "psnr_gain", "ssim_gain", "seconds")
_CELL_INCHES = 2.4
_NAMED_TICKS = 16  # up to this many images, the gain plot names them
_LABEL_BOX = {"facecolor": "black", "alpha": 0.6, "pad": 2, "edgecolor": "none"}


def prepare_report_dir(folder: str | Path) -> Path:
    """Create ``folder``; one that cannot be made is a usage error (checked before scoring)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"{folder}: cannot create that folder ({exc.strerror})", option="report"
        ) from None
    return folder


def write_report(result: EvalResult, folder: str | Path) -> list[Path]:
    """Write the report files into ``folder`` (created); returns their paths."""
    folder = prepare_report_dir(folder)
    paths = [folder / name for name in REPORT_FILES]
    try:
        write_csv(result, paths[0])
        atomic_write_bytes(paths[1], (result.to_json() + "\n").encode())
        _save(comparison_figure(result), paths[2])
        _save(gain_figure(result), paths[3])
    except OSError as exc:
        raise DeblurError(f"{folder}: cannot write the report ({exc})", option="report") from None
    return paths


def write_csv(result: EvalResult, path: Path) -> None:
    """One row per (image, model), the blurry input included."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for score in result.images:
        row = asdict(score)
        row["family"] = row["family"] or ""
        row["seconds"] = "" if row["seconds"] is None else f"{row['seconds']:.4f}"
        for key in ("psnr", "psnr_gain"):
            row[key] = f"{row[key]:.4f}" if math.isfinite(row[key]) else str(row[key])
        for key in ("ssim", "ssim_gain"):
            row[key] = f"{row[key]:.6f}"
        writer.writerow(row)
    atomic_write_bytes(path, buf.getvalue().encode())


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor="white")


def detail_box(sharp: np.ndarray, size: int | None = None) -> tuple[int, int, int]:
    """(top, left, size) of the square of ``sharp`` with the most edge energy."""
    h, w = sharp.shape[:2]
    size = size or max(8, min(h, w) // 4)
    size = min(size, h, w)
    gray = sharp.mean(axis=2)
    energy = np.abs(np.diff(gray, axis=0, append=gray[-1:])) + np.abs(
        np.diff(gray, axis=1, append=gray[:, -1:])
    )
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (
        integral[size:, size:]
        - integral[:-size, size:]
        - integral[size:, :-size]
        + integral[:-size, :-size]
    )
    stride = max(1, size // 4)
    coarse = sums[::stride, ::stride]
    top, left = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
    return int(top * stride), int(left * stride), size


def _columns(result: EvalResult) -> list[tuple[str, str]]:
    """(key, title) of each grid column: blurry | each model | sharp."""
    labels = {r.key: r.label + (" *" if r.non_blind else "") for r in result.rows}
    models = [r.key for r in result.rows if r.key != INPUT_KEY]
    return [(INPUT_KEY, labels[INPUT_KEY]), *[(k, labels[k]) for k in models], ("sharp", "sharp")]


def _picture(sample: SampleImages, key: str) -> np.ndarray:
    if key == INPUT_KEY:
        return sample.blurred
    if key == "sharp":
        return sample.sharp
    return sample.outputs[key]


def _show(ax, image: np.ndarray, interpolation: str = "antialiased") -> None:
    ax.imshow(np.clip(image, 0, 1), interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def comparison_figure(result: EvalResult) -> Figure:
    """Blurry | each model | sharp for each sampled pair, with a zoomed detail row under it."""
    columns = _columns(result)
    samples = result.samples
    if not samples:
        fig = Figure(figsize=(4, 1.5))
        fig.text(0.5, 0.5, "no images were scored", ha="center", va="center")
        return fig
    aspect = max(s.sharp.shape[0] / s.sharp.shape[1] for s in samples)
    fig = Figure(
        figsize=(_CELL_INCHES * len(columns), _CELL_INCHES * len(samples) * (aspect + 1) + 0.6),
        layout="constrained",
    )
    grid = fig.add_gridspec(
        2 * len(samples), len(columns), height_ratios=[aspect, 1] * len(samples)
    )
    for i, sample in enumerate(samples):
        top, left, size = detail_box(sample.sharp)
        for j, (key, title) in enumerate(columns):
            image = _picture(sample, key)
            ax = fig.add_subplot(grid[2 * i, j])
            _show(ax, image)
            ax.add_patch(
                Rectangle((left, top), size, size, fill=False, edgecolor="#ffcc00", linewidth=1.2)
            )
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(sample.name, fontsize=8)
            if key in sample.psnr:
                ax.text(
                    0.03, 0.04, f"{sample.psnr[key]:.2f} dB", transform=ax.transAxes,
                    color="white", fontsize=8, bbox=_LABEL_BOX,
                )  # fmt: skip
            zoom = fig.add_subplot(grid[2 * i + 1, j])
            _show(zoom, image[top : top + size, left : left + size], "nearest")
            if j == 0:
                zoom.set_ylabel(f"detail ×{max(1, round(image.shape[1] / size))}", fontsize=8)
    fig.suptitle("blurry input | models | sharp (PSNR per image; yellow box zoomed below)")
    return fig


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def gain_figure(result: EvalResult) -> Figure:
    """Per-image PSNR gain over the blurry input, images ordered hardest first."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    base = {s.image: s.psnr for s in result.images if s.model == INPUT_KEY}
    order = sorted(base, key=lambda name: base[name])
    position = {name: i for i, name in enumerate(order)}
    for row in result.rows:
        if row.key == INPUT_KEY:
            continue
        scores = sorted(
            (s for s in result.images if s.model == row.key), key=lambda s: position[s.image]
        )
        xs = [position[s.image] for s in scores]
        ys = [s.psnr_gain if math.isfinite(s.psnr_gain) else np.nan for s in scores]
        label = f"{row.label} (mean {row.psnr_gain:+.2f} dB)"
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=label)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    if 0 < len(order) <= _NAMED_TICKS:
        ax.set_xticks(range(len(order)), [_short(n) for n in order], rotation=40, ha="right")
        ax.tick_params(axis="x", labelsize=7)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("image (ordered by blurry-input PSNR, hardest first)")
    ax.set_ylabel("PSNR gain over blurry input (dB)")
    ax.set_title("Per-image PSNR gain")
    ax.grid(alpha=0.3)
    if len(result.rows) > 1:
        ax.legend(fontsize=8, loc="best")
    return fig
