"""The run folder's human-readable log: ``metrics.csv`` and ``curves.png``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from deblurcli.imageio import atomic_path, atomic_write_bytes

COLUMNS = ("step", "kind", "lr", "loss", "terms", "psnr", "patches_per_s", "blurry_psnr")


class MetricsLog:
    """Rows of training (loss terms) and validation (PSNR) metrics, rewritten atomically."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            # Rows after the checkpoint belong to the interrupted tail and are redone.
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]

        self.tb = _tensorboard(run_dir / "tensorboard")

    def add(self, step: int, kind: str, **values: float | str | None) -> None:
        row = {"step": str(step), "kind": kind}
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, float):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)
        for key, value in values.items():
            row[key] = f"{value:.6g}" if isinstance(value, float) else str(value or "")
        self.rows.append(row)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def plot(self, title: str = "training curves") -> Path | None:
        """Loss and validation PSNR curves, with the blurry input's PSNR on the same
        validation pairs as a dashed line (matplotlib Agg, no display needed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(int(r["step"]), float(r["loss"])) for r in self.rows if r["kind"] == "train"]
        val = [
            (int(r["step"]), float(r["psnr"]))
            for r in self.rows
            if r["kind"] == "val" and r.get("psnr") and math.isfinite(float(r["psnr"]))
        ]
        blurry = [
            float(r["blurry_psnr"])
            for r in self.rows
            if r["kind"] == "val" and r.get("blurry_psnr")
        ]
        blurry = [v for v in blurry if math.isfinite(v)]
        if not train:
            return None
        fig, ax = plt.subplots(figsize=(7, 4))
        lines = ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss" + (" (log scale)" if all(v > 0 for _, v in train) else ""))
        if all(v > 0 for _, v in train):
            ax.set_yscale("log")
        if val:
            ax2 = ax.twinx()
            lines += ax2.plot(*zip(*val, strict=True), "o-", color="tab:orange", label="val PSNR")
            if blurry:
                lines.append(
                    ax2.axhline(
                        blurry[-1],
                        color="tab:gray",
                        linestyle="--",
                        label=f"blurry input ({blurry[-1]:.2f} dB)",
                    )
                )
            ax2.set_ylabel("validation PSNR (dB)")
        ax.set_title(title, fontsize=10)
        ax.legend(lines, [line.get_label() for line in lines], loc="best", fontsize=8)
        fig.tight_layout()
        out = self.path.with_name("curves.png")
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        return out


def _tensorboard(folder: Path) -> Any:
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: torch's module needs the tensorboard package
        return None
    return SummaryWriter(str(folder))
