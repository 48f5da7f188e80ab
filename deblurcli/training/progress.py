"""The training progress bar: loss terms and patches/s on stderr (a no-op when disabled)."""

from __future__ import annotations

from typing import Any

from rich.console import Console


class ProgressBar:
    """A Rich progress bar of a run's steps; ``console`` defaults to one on stderr."""

    def __init__(
        self, enabled: bool, total: int, start: int, batch: int, console: Console | None = None
    ):
        self.enabled, self.total, self.start, self.batch = enabled, total, start, batch
        self.console = console
        self._progress: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console or Console(stderr=True),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.start, info=""
            )
        return self

    def __call__(self, step: int, terms: dict[str, float], rate: float) -> None:
        if self._progress is not None:
            info = " ".join(f"{k} {v:.4g}" for k, v in terms.items())
            info += f" | {rate / self.batch:.2f} it/s, {rate:.1f} patches/s"
            self._progress.update(self._task, completed=step, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
