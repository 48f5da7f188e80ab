"""Train several models at once on shared batches, within a wall-clock budget.

The GPU run of the pretrained pipeline trains all six architectures in one process. The
degradation is done on the CPU by the data loader's workers (3–5 ms per 128² patch and
core), so six separate runs would need six times the patches; here one loader feeds every
model the same batches and each model takes one step per batch in turn. Every member is
an ordinary :class:`~deblurcli.training.trainer.Trainer` with its own run folder, recipe,
optimiser and validation, so what a cohort writes is what ``deblur train`` writes.

The learning-rate schedule needs a step count, which a time budget does not give: after a
short calibration the rounds per second are measured and each member's ``steps`` is set to
the rounds that fit the budget (re-estimated at every checkpoint). Members validate and
export every ``checkpoint_s`` seconds and at the end, so a run cut short keeps its best
weights; ``on_checkpoint`` is called after each, for example to pack the exports.

``first_stage=(kind, share)`` is a curriculum: the first ``share`` of the time budget trains
on ``kind`` blur (e.g. Gaussian, which every model learns quickly and keeps), the rest on
the members' own ``degrade`` (docs/ablations.md, "Two stages").
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from deblurcli.errors import UsageError
from deblurcli.training.trainer import TrainConfig, Trainer, TrainResult

log = logging.getLogger(__name__)
# Data settings every member must share: they all train on the same batches.
_SHARED = (
    "data",
    "sharp",
    "blurred",
    "val",
    "degrade",
    "degrade_options",
    "patch_size",
    "batch_size",
    "seed",
)
_NOMINAL_STEPS = 10**6  # the schedule's length until calibration measures the real one


@dataclass
class CohortResult:
    """What the cohort did: each member's result or error, and the rounds it ran."""

    results: dict[str, TrainResult]
    errors: dict[str, str]
    rounds: int
    seconds: float


def _check_shared(configs: Mapping[str, TrainConfig]) -> None:
    first_name, first = next(iter(configs.items()))
    for name, cfg in configs.items():
        for key in _SHARED:
            if getattr(cfg, key) != getattr(first, key):
                raise UsageError(
                    f"cohort members share their data: {name} has {key}={getattr(cfg, key)!r}, "
                    f"{first_name} has {getattr(first, key)!r}"
                )


def _on_device(batch: Any, device: torch.device) -> Any:
    """Move the shared batch once; members then find it already there."""
    blurred, sharp, skipped = batch
    return blurred.to(device, non_blocking=True), sharp.to(device, non_blocking=True), skipped


def _reoriented(batch: Any, turn: int) -> Any:
    """The batch turned by ``turn`` quarter turns and mirrored on odd turns (pairs stay pairs)."""
    blurred, sharp, _ = batch

    def move(x: torch.Tensor) -> torch.Tensor:
        x = torch.rot90(x, turn % 4, dims=(-2, -1))
        return x.flip(-1) if turn % 2 else x

    return move(blurred), move(sharp), [""] * len(batch[2])


class _Feed:
    """Loader batches prefetched by a thread, echoed when the next one is not ready.

    Data echoing (Choi et al. 2019): when the model steps faster than the loader degrades
    patches, the last batch is reused, in another orientation, up to ``echo`` more times
    instead of leaving the GPU idle. ``echo=0`` always waits for a fresh batch.
    """

    def __init__(self, batches: Any, device: torch.device, echo: int, depth: int = 4):
        self.device, self.echo = device, echo
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.last: Any = None
        self.uses = 0
        self.fresh = self.echoed = 0
        self.wait_s = 0.0
        self.thread = threading.Thread(target=self._fill, args=(batches,), daemon=True)
        self.thread.start()

    def _fill(self, batches: Any) -> None:
        try:
            while not self.stopping.is_set():
                item = next(batches)
                while not self.stopping.is_set():
                    try:
                        self.queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the training thread, which raises it
            self.queue.put(exc)

    def next(self) -> Any:
        if self.last is not None and self.uses <= self.echo:
            try:
                return self._fresh(self.queue.get_nowait())
            except queue.Empty:
                self.uses += 1
                self.echoed += 1
                return _reoriented(self.last, self.uses - 1)
        start = time.perf_counter()
        item = self.queue.get()
        self.wait_s += time.perf_counter() - start
        return self._fresh(item)

    def _fresh(self, item: Any) -> Any:
        if isinstance(item, BaseException):
            raise item
        self.last, self.uses = _on_device(item, self.device), 1
        self.fresh += 1
        return self.last

    def close(self) -> None:
        self.stopping.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.2)
            self.thread.join(timeout=0.2)


class Cohort:
    """Members trained round-robin on one loader's batches; see the module docstring."""

    def __init__(
        self,
        configs: Mapping[str, TrainConfig],
        *,
        seconds: float,
        checkpoint_s: float = 90.0,
        calibrate_s: float = 20.0,
        final_s: float = 10.0,
        max_rounds: int | None = None,
        echo: int = 0,
        on_checkpoint: Callable[[Cohort], None] | None = None,
        first_stage: tuple[str, float] | None = None,
    ):
        if not configs:
            raise UsageError("a cohort needs at least one model")
        if seconds <= 0:
            raise UsageError(f"the time budget must be positive, got {seconds} s")
        _check_shared(configs)
        self.seconds, self.checkpoint_s, self.calibrate_s = seconds, checkpoint_s, calibrate_s
        # Time kept for the last checkpoint; raised to what the periodic ones really took.
        self.final_s = final_s
        self.on_checkpoint = on_checkpoint
        self.max_rounds = max_rounds  # a smoke run's cap; the clock is the real limit
        self.echo = echo
        if first_stage is not None and not 0 <= first_stage[1] <= 1:
            raise UsageError(f"a first stage's share must be in [0, 1], got {first_stage[1]}")
        self.first_stage = first_stage if first_stage and first_stage[1] > 0 else None
        self.stages: list[tuple[str, int]] = []  # (blur kind, the round it started at)
        self.feed: _Feed | None = None
        self._past_wait_s, self._past_echoed = 0.0, 0  # of the feeds of earlier stages
        self.errors: dict[str, str] = {}
        self.trainers: dict[str, Trainer] = {}
        for name, cfg in configs.items():
            # Validation and checkpoints follow the clock, not the step count.
            nominal = {"steps": _NOMINAL_STEPS, "val_every": _NOMINAL_STEPS}
            self.trainers[name] = Trainer(replace(cfg, **nominal, ckpt_every=_NOMINAL_STEPS))
        self.rounds = 0
        self.started = 0.0

    @property
    def loader_wait_s(self) -> float:
        """Seconds spent waiting for a fresh batch: the loader-bound share of the run."""
        return self._past_wait_s + (self.feed.wait_s if self.feed is not None else 0.0)

    @property
    def echoed(self) -> int:
        """Rounds that reused a batch because the loader was behind."""
        return self._past_echoed + (self.feed.echoed if self.feed is not None else 0)

    def _start_stage(self, kind: str | None) -> None:
        """Feed the members ``kind`` blur from now on (None: their own ``degrade``)."""
        first = next(iter(self.trainers.values()))
        if self.feed is not None:
            self.feed.close()  # its loader's workers go with it
            self._past_wait_s += self.feed.wait_s
            self._past_echoed += self.feed.echoed
        batches = first.batches() if kind is None else first.batches(kind)
        kind = kind or first.cfg.degrade
        self.stages.append((kind, self.rounds))
        log.info("round %d: training on %s blur", self.rounds, kind)
        self.feed = _Feed(batches, first.device, self.echo)

    @property
    def active(self) -> dict[str, Trainer]:
        return {n: t for n, t in self.trainers.items() if n not in self.errors}

    def _fail(self, name: str, exc: BaseException) -> None:
        self.trainers[name].close()  # a dropped member's run folder is free again
        self.errors[name] = f"{type(exc).__name__}: {exc}"
        log.error("%s dropped from the cohort at round %d: %s", name, self.rounds, exc)

    def _set_schedule(self, rate: float, elapsed: float) -> None:
        """Stretch every member's schedule over the rounds the rest of the budget holds."""
        left = max(0.0, self.seconds - self.final_s - elapsed)
        total = self.rounds + int(rate * left)
        for trainer in self.active.values():
            trainer.cfg.steps = max(total, trainer.step + 1)
        log.info("schedule: %d steps per model (%.2f rounds/s)", total, rate)

    def checkpoint(self) -> None:
        """Validate and export every member; then ``on_checkpoint``."""
        start = time.perf_counter()
        for name, trainer in self.active.items():
            try:
                best = trainer.validate_and_export()
                trainer.metrics.flush()
                log.info(
                    "%s step %d: %.1f patches/s, best val %s",
                    name,
                    trainer.step,
                    trainer.rate,
                    "-" if best is None else f"{best:.2f} dB",
                )
            except Exception as exc:  # one member's failure must not cost the others
                self._fail(name, exc)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        log.info(
            "round %d: %.2f rounds/s, %.0f%% of the time waiting for the loader, %d echoed",
            self.rounds,
            self.rounds / elapsed,
            100 * self.loader_wait_s / elapsed,
            self.echoed,
        )
        if self.on_checkpoint is not None:
            self.on_checkpoint(self)
        self.final_s = max(self.final_s, 1.5 * (time.perf_counter() - start))

    def run(self) -> CohortResult:
        """Train until the budget is spent or every member has failed.

        Each member holds its run folder's lock from the start until it finishes or fails,
        so no other run (another cohort or ``deblur train``) writes into it meanwhile.
        """
        try:
            return self._run()
        finally:
            for trainer in self.trainers.values():
                trainer.close()

    def _run(self) -> CohortResult:
        for trainer in self.trainers.values():
            trainer.begin()
        self.started = time.perf_counter()
        kind, share = self.first_stage or (None, None)
        self._start_stage(kind)
        stage_end = None if share is None else share * self.seconds
        calibrated_at: tuple[float, int] | None = None
        next_checkpoint = self.checkpoint_s
        try:
            while self.active and self.rounds != self.max_rounds:
                elapsed = time.perf_counter() - self.started
                if self.rounds and elapsed + self.final_s >= self.seconds:
                    break  # after one round at least: every member has something to export
                if stage_end is not None and self.rounds and elapsed >= stage_end:
                    self._start_stage(None)
                    stage_end = None
                if calibrated_at is None and elapsed >= self.calibrate_s:
                    calibrated_at = (elapsed, self.rounds)  # after start-up and autotuning
                due = elapsed >= next_checkpoint and elapsed + 2 * self.final_s < self.seconds
                if calibrated_at is not None and due:
                    t0, r0 = calibrated_at
                    self._set_schedule((self.rounds - r0) / max(elapsed - t0, 1e-9), elapsed)
                    self.checkpoint()
                    next_checkpoint = elapsed + self.checkpoint_s
                self._round(self.feed.next())
                if calibrated_at is not None and calibrated_at[1] == self.rounds - 1:
                    self._set_schedule(self.rounds / max(elapsed, 1e-9), elapsed)
        finally:
            if self.feed is not None:
                self.feed.close()  # the loader's workers go with it
        seconds = time.perf_counter() - self.started
        self.checkpoint()
        results = {}
        for name, trainer in self.active.items():
            try:
                results[name] = trainer.finish()
            except Exception as exc:
                self._fail(name, exc)
        return CohortResult(results, dict(self.errors), self.rounds, seconds)

    def _round(self, batch: Any) -> None:
        for name, trainer in self.active.items():
            try:
                terms = trainer.advance(batch)
            except Exception as exc:
                self._fail(name, exc)
                continue
            if not math.isfinite(terms.get("loss", 0.0)):
                self._fail(name, FloatingPointError(f"loss {terms['loss']}"))
        self.rounds += 1


def train_cohort(configs: Mapping[str, TrainConfig], **options: Any) -> CohortResult:
    """Train ``configs`` (name → config) together; see :class:`Cohort` for ``options``."""
    return Cohort(configs, **options).run()
