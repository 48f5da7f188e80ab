"""The training loop: ``train(TrainConfig) -> TrainResult``.

A run folder holds ``config.json``, ``metrics.csv``, ``curves.png``, ``result.json`` (the
:class:`TrainResult`, as ``--json`` prints it), ``model.safetensors`` (best by validation
PSNR; the export ``restore``/``eval`` load), ``last.safetensors`` and ``checkpoints/last.pt``
(the resumable state, see :mod:`.state`). Every file is written atomically, so a kill
never leaves a half-written checkpoint, and one process at a time writes a run folder (its
lock is held from :meth:`Trainer.begin` to :meth:`Trainer.finish`).
``init`` starts from a pretrained model and ``freeze`` keeps parts of it fixed (see
:mod:`.warmstart`).

The pieces, in the spirit of BasicSR's model/train split: :mod:`.config` (what a run is
given and reports), :mod:`.recipes` (how each arch trains), :mod:`.losses` (the loss
registry), :mod:`.learner` (the network, its losses and optimisers, one step: BasicSR's
``SRModel``), :mod:`.loaders` (data), :mod:`.state` (checkpoint and resume) and this module,
which builds one run from them and drives its loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from deblurcli.archs import create, get_spec
from deblurcli.data import dataset as ds
from deblurcli.errors import TrainingDivergedError, UsageError
from deblurcli.imageio import atomic_path, atomic_write_bytes
from deblurcli.inference.device import pick_device
from deblurcli.locks import output_lock
from deblurcli.metrics import psnr
from deblurcli.training import distributed as dd
from deblurcli.training import state as run_state
from deblurcli.training.batchnorm import batchnorm_layers, recompute_batchnorm_stats
from deblurcli.training.config import DEFAULT_EVERY, TrainConfig, TrainResult, check_numbers
from deblurcli.training.learner import Learner
from deblurcli.training.loaders import build_data, restaged, train_batches
from deblurcli.training.precision import Precision, resolve
from deblurcli.training.progress import ProgressBar
from deblurcli.training.recipes import LossTerm, Recipe, override, recipe_for_arch
from deblurcli.training.runlog import MetricsLog
from deblurcli.training.warmstart import (
    INIT_KEY,
    InitSource,
    check_arch,
    freeze,
    init_config,
    load_init,
    load_init_weights,
)
from deblurcli.weights.checkpoint import save_checkpoint

__all__ = ["DEFAULT_EVERY", "TrainConfig", "TrainResult", "Trainer", "arch_config", "train"]

STATE_FILE = run_state.STATE_FILE
RESULT_NAME = "result.json"  # what train() returned, as deblur train --json prints it
# Seeds the BatchNorm calibration patches apart from the training stream's sample keys.
_CALIBRATION_STREAM = 0xB4


def arch_config(config: TrainConfig, init_base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model config of a run; ``init_base``: the config of the model it starts from."""
    if init_base is not None:
        return init_config(config.arch, init_base, config.arch_config)
    spec = get_spec(config.arch)
    if config.width not in ("default", "tiny"):
        raise UsageError(f"must be 'default' or 'tiny', not {config.width!r}", option="width")
    base = dict(spec.tiny_config) if config.width == "tiny" else {}
    base.update(config.arch_config)
    return base


def _build(config: TrainConfig, init_base: dict[str, Any] | None = None) -> nn.Module:
    """The model to train; a --config value the architecture rejects is a usage error."""
    try:
        return create(config.arch, **arch_config(config, init_base))
    except (TypeError, ValueError, RuntimeError) as exc:
        if not config.arch_config:
            raise  # the defaults failing is a bug, not the user's doing
        given = " ".join(f"{k}={v!r}" for k, v in config.arch_config.items())
        raise UsageError(f"{given} does not fit {config.arch}: {exc}", option="config") from None


class Trainer:
    """One training run.

    :meth:`run` trains it to the end; a caller that drives several runs (the cohort) uses the
    step API instead: :meth:`begin`, :meth:`batches`, :meth:`advance`,
    :meth:`validate_and_export`, :meth:`save` and :meth:`finish`. From :meth:`begin` until
    :meth:`finish` (or :meth:`close`) the trainer holds its run folder's writer lock.
    """

    def __init__(self, config: TrainConfig, *, console: Console | None = None):
        self.console = console  # where the progress bar goes (default: a stderr console)
        self._lock: contextlib.ExitStack | None = None
        source = _init_source(config)
        config = _with_arch_and_out(config, source)
        self.run_dir = Path(config.out)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UsageError(f"{self.run_dir}: exists and is not a folder", option="out")
        self.device = pick_device(config.device)
        check_numbers(config)
        self._join_ranks()
        self.cfg = self._resume(config, source)
        self.prec = self._precision()
        self.recipe = self._recipe()
        self._setup_model(source)
        # Data first: a bad --data is reported before any warning about the losses (VGG).
        self._setup_data()
        self.learner = Learner(
            self.model, self.recipe, self.cfg, **self._placement(), frozen=self.frozen
        )
        self._start_counters()

    # ---------------------------------------------------------------- setup
    def _join_ranks(self) -> None:
        self.dist = dd.init(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)

    def _placement(self) -> dict[str, Any]:
        return {"device": self.device, "dist": self.dist, "prec": self.prec}

    def _resume(self, config: TrainConfig, source: InitSource | None) -> TrainConfig:
        """The run's config: a resumed run's saved settings win over a changed command line."""
        if not config.resume and self._state_path().exists():
            raise UsageError(
                f"{self.run_dir} already holds a training run; pass {{resume}} to continue it "
                "or choose another {out}",
                mentions=("resume", "out"),
            )
        self.lineage = source.lineage if source is not None else None
        self.state = run_state.load_state(self.run_dir) if config.resume else None
        if self.state is not None:
            config = run_state.merge_saved(config, run_state.saved_config(self.state), self.run_dir)
            # The checkpoint wins over the init weights; the lineage goes on being recorded.
            self.lineage = run_state.saved_lineage(self.state)
        defaults = {k: v for k, v in DEFAULT_EVERY.items() if getattr(config, k) is None}
        return dataclasses.replace(config, **defaults)

    def _precision(self) -> Precision:
        prec = resolve(self.cfg.arch, self.device, self.cfg.precision)
        if self.cfg.channels_last is not None:
            prec = dataclasses.replace(prec, channels_last=self.cfg.channels_last)
        return prec

    def _recipe(self) -> Recipe:
        cfg = self.cfg
        recipe = override(
            recipe_for_arch(cfg.arch),
            loss=cfg.loss,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            schedule=cfg.schedule,
            warmup=cfg.warmup,
            grad_clip=cfg.grad_clip,
            adversarial=None if cfg.adversarial else False,
            n_critic=cfg.n_critic,
        )
        if self.lineage is not None:  # the edge branch is trained already
            recipe = dataclasses.replace(recipe, edge_pretrain=0.0)
        return recipe

    def _setup_model(self, source: InitSource | None) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights (and critic) on every rank
        random.seed(cfg.seed)
        model = _build(cfg, self.lineage["config"] if self.lineage else None)
        if source is not None:
            load_init_weights(model, source, cfg.arch_config)
        self.frozen = freeze(model, cfg.freeze)
        self.model = model.to(self.device)
        self.multiple = getattr(self.model, "size_multiple", 1)
        if cfg.patch_size % self.multiple:
            nearest = -(-cfg.patch_size // self.multiple) * self.multiple
            raise UsageError(
                f"must be a multiple of {self.multiple} for {cfg.arch} (try {nearest})",
                option="patch_size",
            )

    def _setup_data(self) -> None:
        data = build_data(self.cfg, self.multiple)
        self.train_set, self.val_set, self.problems = data.train_set, data.val_set, data.problems

    def _start_counters(self) -> None:
        if self.dist.enabled:  # but different dropout/GP noise per rank
            torch.manual_seed(self.cfg.seed + 7919 * self.dist.rank)
        self.step = 0
        self.rate = 0.0
        self.last_terms: dict[str, float] = {}
        self._val_pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._calibration: list[torch.Tensor] | None = None
        self.best_psnr: float | None = None
        self.blurry_psnr: float | None = None
        if self.state is not None:
            self._restore(self.state)
        self.metrics = MetricsLog(self.run_dir, self.step if self.state is not None else None)

    def _loader(self, data: Any = None) -> Iterator[Any]:
        """Batches of ``data`` (default: the run's training set) from the current step on."""
        pin = self.device.type == "cuda"
        data = self.train_set if data is None else data
        return train_batches(data, self.cfg, step=self.step, dist=self.dist, pin=pin)

    # ---------------------------------------------------------------- state
    def _state_path(self) -> Path:
        return run_state.state_path(self.run_dir)

    @property
    def terms(self) -> list[LossTerm]:
        """The loss terms the run trains with (after a missing VGG19's fallback)."""
        return self.learner.terms

    @property
    def perceptual(self) -> str:
        """How the perceptual terms' VGG19 was found: "not used", "dropped" or its source."""
        return self.learner.perceptual

    def _restore(self, state: dict[str, Any]) -> None:
        run_state.load_into(self.learner.stateful(), state)
        self.step = int(state["step"])
        self.best_psnr = state.get("best_psnr")
        run_state.restore_rng(state["rng"], self.dist.rank, self.device)

    def _save_state(self) -> None:
        rngs = dd.gather(run_state.capture_rng(self.device), self.dist)
        if not self.dist.is_main:
            return
        snapshot = run_state.snapshot(
            self.learner.stateful(),
            step=self.step,
            rngs=rngs,
            best_psnr=self.best_psnr,
            config=self.cfg,
            lineage=self.lineage,
        )
        # Exports first: the training state is the commit marker of a complete checkpoint.
        save_checkpoint(self.model, self.run_dir / "last.safetensors", metadata=self._meta())
        if self.val_set is None or not (self.run_dir / "model.safetensors").exists():
            self._export()
        run_state.write_state(self.run_dir, snapshot)

    def _meta(self) -> dict[str, str]:
        meta = {
            "deblurcli.recipe": self.recipe.describe(),
            "perceptual": self.perceptual,
            "step": str(self.step),
            "best_psnr": "" if self.best_psnr is None else f"{self.best_psnr:.4f}",
            "precision": self.prec.name,
            "train_config": json.dumps(self.cfg.to_json()),
        }
        if self.lineage is not None:
            meta[INIT_KEY] = json.dumps(self.lineage)
        return meta

    def _export(self) -> Path:
        return save_checkpoint(
            self.model, self.run_dir / "model.safetensors", metadata=self._meta()
        )

    # ---------------------------------------------------------------- steps
    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor, Any]) -> dict[str, float]:
        """One optimisation step on a batch; returns the loss terms as floats."""
        try:
            terms = self.learner.train_step(batch, self.step)
        except TrainingDivergedError as exc:  # the run knows where its last checkpoint is
            raise exc.extended(
                after=f"; last good checkpoint: {self._last_good()}; "
                "try a lower {lr} or {precision} fp32",
                mentions=("lr", "precision"),
            ) from None
        self.step += 1
        return terms

    def _last_good(self) -> str:
        path = self._state_path()
        return str(path) if path.exists() else "none yet (no checkpoint was written)"

    def _validation_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The validation crops, decoded and degraded once (their blur depends on the name only)."""
        if self._val_pairs is None:
            self._val_pairs = []
            assert self.val_set is not None
            for i in range(len(self.val_set)):
                if i in self.val_set.bad:
                    continue
                try:
                    blurred, sharp, skipped = self.val_set[i]
                except ds.DataError:  # every validation image is unreadable
                    break
                self.problems += [f"{n}: unreadable, skipped" for n in skipped.split("|") if n]
                self._val_pairs.append((blurred[None], sharp[None]))
        return self._val_pairs

    def _calibration_batches(self) -> list[torch.Tensor]:
        """``bn_calibration`` blurred training patches, the same at every validation.

        Drawn from their own sample keys, so the training stream (and a resume) is unchanged;
        kept in fp16 on the CPU (50 MB for 512 patches of 128²).
        """
        if self._calibration is None:
            n, size = self.cfg.bn_calibration, self.cfg.batch_size
            seed = (self.cfg.seed, _CALIBRATION_STREAM)
            keys = [(i % len(self.train_set), (*seed, i)) for i in range(n)]
            self._calibration = [
                torch.stack([self.train_set[k][0] for k in keys[i : i + size]]).half()
                for i in range(0, n, size)
            ]
        return self._calibration

    def calibrate_batchnorm(self) -> int:
        """Recompute the BatchNorm statistics over the calibration patches (fp32).

        Returns the number of layers recomputed (0: the model has none, they are frozen, or
        ``bn_calibration`` is 0).
        """
        layers = batchnorm_layers(self.model, self.frozen)
        if not layers or not self.cfg.bn_calibration:
            return 0
        batches = (self.learner.to_device(b).float() for b in self._calibration_batches())
        recompute_batchnorm_stats(layers, self.model, batches)
        return len(layers)

    def _freeze_batchnorm(self) -> None:
        """``freeze_bn``: statistics recomputed for the starting weights, then kept fixed.

        A resumed run keeps the statistics it saved, so that it continues exactly.
        """
        if self.state is None:
            self.calibrate_batchnorm()
        self.frozen.extend(batchnorm_layers(self.model, self.frozen))  # eval mode from now on

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean PSNR (dB) of the model on the validation crops, in fp32.

        BatchNorm statistics are recomputed first (:meth:`calibrate_batchnorm`; not when
        frozen), so the score and the exported weights do not depend on the last few batches.
        Also sets ``blurry_psnr``, the blurry inputs' mean PSNR on the same crops.
        """
        if self.val_set is None:
            return None
        self.calibrate_batchnorm()
        self.model.eval()
        values, inputs = [], []
        for blurred, sharp in self._validation_pairs():
            out = self.model(blurred.to(self.device)).float().clamp(0, 1)
            values.append(psnr(out.cpu(), sharp).clamp(max=100.0))
            inputs.append(psnr(blurred.float().clamp(0, 1), sharp).clamp(max=100.0))
        self.model.train()
        if inputs:
            self.blurry_psnr = float(torch.cat(inputs).mean())
        return float(torch.cat(values).mean()) if values else None

    # ---------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Train to ``steps`` (or ``stop_after`` more steps) and describe the run."""
        try:
            self.begin()
            cfg = self.cfg
            end = (
                cfg.steps if cfg.stop_after is None else min(cfg.steps, self.step + cfg.stop_after)
            )
            self._train_until(end)
            return self.finish()
        finally:
            self.close()

    def _train_until(self, end: int) -> None:
        cfg, batches = self.cfg, self.batches()
        shown = cfg.progress and self.dist.is_main
        bar = ProgressBar(shown, cfg.steps, self.step, self._patches_per_step, self.console)
        try:
            with bar:
                while self.step < end:
                    self.advance(next(batches))
                    bar(self.step, self.last_terms, self.rate)
                    if self.step % cfg.val_every == 0 or self.step == end:
                        self._validate_and_export()
                    if self.step % cfg.ckpt_every == 0 or self.step == end:
                        self.save()
        finally:
            del batches  # shuts the worker processes down now, even on an error

    # ------------------------------------------------- step-level API (runs, cohorts)
    def begin(self) -> None:
        """Take the run folder's lock, write its ``config.json``, fix the BatchNorm statistics
        (``freeze_bn``), start the patches/s clock."""
        self._hold_run_folder()
        if self.dist.is_main and (self.state is None or self.step < self.cfg.steps):
            self._prepare_run_dir()  # a resume with nothing to train leaves the folder as it was
        if self.cfg.freeze_bn:  # a second begin() finds no unfrozen layer: a no-op
            self._freeze_batchnorm()
        self._start_step = self.step
        self._clock = (time.perf_counter(), self.step)

    def _hold_run_folder(self) -> None:
        """One writer per run folder: rank 0 holds its lock until :meth:`close`."""
        if self._lock is not None or not self.dist.is_main:
            return
        lock = contextlib.ExitStack()
        lock.enter_context(_run_folder_lock(self.run_dir))
        self._lock = lock
        if self.state is None and self._state_path().exists():
            self.close()
            raise UsageError(f"{self.run_dir}: another run started there meanwhile")

    def close(self) -> None:
        """Release the run folder's lock (:meth:`finish` does; safe to call again)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _patches_per_step(self) -> int:
        return self.cfg.batch_size * self.dist.world

    def batches(self, degrade: str | None = None) -> Iterator[Any]:
        """The endless stream of training batches (``(blurred, sharp, skipped)``);
        ``degrade``: another on-the-fly blur kind than the run's (a curriculum's stage)."""
        if degrade is None or degrade == self.cfg.degrade:
            return self._loader()
        return self._loader(restaged(self.train_set, degrade))

    def advance(self, batch: tuple[torch.Tensor, torch.Tensor, Any]) -> dict[str, float]:
        """One step on ``batch`` with its bookkeeping (problems, patches/s, train log)."""
        for names in batch[2]:
            self.problems += [f"{n}: unreadable, skipped" for n in names.split("|") if n]
        self.last_terms = self.train_step(batch)
        t0, n0 = self._clock
        elapsed = max(time.perf_counter() - t0, 1e-9)
        self.rate = (self.step - n0) * int(batch[0].shape[0]) * self.dist.world / elapsed
        if self.dist.is_main and self.step % self.cfg.log_every == 0:
            self._log_train(self.last_terms, self.rate)
        return self.last_terms

    def validate_and_export(self) -> float | None:
        """Validate now; export ``model.safetensors`` when this is the best so far."""
        self._validate_and_export()
        return self.best_psnr

    def save(self) -> None:
        """Write the resumable training state (and the exports) and flush the metrics."""
        self._save_state()
        if self.dist.is_main:
            self.metrics.flush()

    def finish(self) -> TrainResult:
        """Flush the log, draw the curves, release the folder and describe the run."""
        try:
            if self.dist.is_main and self.step > self._start_step:  # nothing trained: no rewrite
                if self.last_terms and self.step % self.cfg.log_every:
                    self._log_train(self.last_terms, self.rate)
                self.metrics.flush()
                self.metrics.plot(title=f"deblur train --arch {self.cfg.arch}: {self.run_dir}")
            result = self._result()
            if self.dist.is_main:
                write_result(result)
            dd.barrier(self.dist)
        finally:
            self.close()
        return result

    def _result(self) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir,
            model_path=self.run_dir / "model.safetensors",
            step=self.step,
            steps=self.cfg.steps,
            last_loss=self.last_terms.get("loss", float("nan")),
            best_psnr=self.best_psnr,
            perceptual=self.perceptual,
            precision=self.prec.name,
            channels_last=self.prec.channels_last,
            patches_per_s=self.rate,
            problems=sorted(set(self.problems)),
            new_steps=self.step - self._start_step,
            blurry_psnr=self.blurry_psnr,
            arch=self.cfg.arch,
            init=self.lineage,
            device=str(self.device),
        )

    def _prepare_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"{self.run_dir}: cannot create it ({exc.strerror})", option="out"
            ) from None
        info = {"config": self.cfg.to_json(), "recipe": dataclasses.asdict(self.recipe)}
        info["arch_config"] = self.model.arch_config
        if self.lineage is not None:
            info["init"] = self.lineage
        info["perceptual"], info["precision"] = self.perceptual, self.prec.name
        with atomic_path(self.run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(info, indent=2, default=str))

    def _log_train(self, terms: dict[str, float], rate: float) -> None:
        detail = " ".join(f"{k}={v:.5g}" for k, v in terms.items() if k != "loss")
        self.metrics.add(
            self.step,
            "train",
            lr=self.learner.lr(),
            loss=terms["loss"],
            terms=detail,
            patches_per_s=self.rate,
        )

    def _validate_and_export(self) -> None:
        if not self.dist.is_main:
            return
        value = self.validate()
        if value is None:
            return
        self.metrics.add(self.step, "val", psnr=value, blurry_psnr=self.blurry_psnr)
        if self.best_psnr is None or value > self.best_psnr:
            self.best_psnr = value
            self._export()


def _init_source(config: TrainConfig) -> InitSource | None:
    """The model ``config.init`` starts from (on the CPU), after checking what goes with it."""
    if config.init is None:
        return None
    if config.resume:
        raise UsageError(
            "{init} and {resume} are exclusive: {resume} continues a run (a run "
            "started with {init} keeps its weights and lineage), {init} starts a new one",
            mentions=("init", "resume"),
        )
    if config.width != "default":
        raise UsageError(
            f"does not apply with {{init}}: the model's config comes from {config.init}",
            option="width",
            mentions=("init",),
        )
    return load_init(config.init)


def _with_arch_and_out(config: TrainConfig, source: InitSource | None) -> TrainConfig:
    """``config`` with the arch of the init model and the default run folder filled in."""
    if source is not None:
        config = dataclasses.replace(config, arch=check_arch(source, config.arch, config.init))
    if config.arch is None and not (config.resume and config.out is not None):
        raise UsageError(
            "give the architecture to train ({arch} NAME) or {init} MODEL",
            mentions=("arch", "init"),
        )
    if config.out is None:
        config = dataclasses.replace(config, out=Path("runs") / config.arch)
    return config


def train(config: TrainConfig, *, console: Console | None = None) -> TrainResult:
    """Train ``config.arch`` and write the run folder; see :class:`TrainConfig`.

    ``console``: where the progress bar is drawn (``config.progress``); default stderr.
    """
    trainer = Trainer(config, console=console)
    try:
        return trainer.run()
    finally:
        dd.shutdown(trainer.dist)


def write_result(result: TrainResult) -> Path:
    """``RUN/result.json``: the ``--json`` result, for scripts that read rather than parse.

    Rewritten when this call trained (or the file is missing), so a resume with nothing
    left to train leaves it as it was.
    """
    path = result.run_dir / RESULT_NAME
    if result.new_steps or not path.is_file():
        atomic_write_bytes(path, (json.dumps(result.to_json(), indent=2) + "\n").encode())
    return path


@contextlib.contextmanager
def _run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s writer lock; a second writer into it fails with one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a folder", option="out")
    held = contextlib.ExitStack()
    try:
        held.enter_context(output_lock(run_dir, "deblur train"))
    except OSError as exc:  # e.g. a path below a file
        raise UsageError(f"{run_dir}: cannot create it ({exc.strerror})", option="out") from None
    with held:
        yield
