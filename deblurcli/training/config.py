"""A training run's settings (:class:`TrainConfig`) and its report (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deblurcli.errors import UsageError

# Cadence defaults (steps) when neither the command line nor a resumed run sets them.
DEFAULT_EVERY = {"val_every": 500, "ckpt_every": 500, "log_every": 10}


@dataclass
class TrainConfig:
    """Everything ``deblur train`` accepts; ``None`` means the recipe's or arch's default.

    ``arch`` may be None with ``init`` (the init model's arch); ``out`` defaults to runs/ARCH.
    """

    arch: str | None = None
    out: Path | None = None
    data: Path | None = None
    sharp: Path | None = None
    blurred: Path | None = None
    val: Path | None = None
    degrade: str | None = None
    # DegradeOptions fields over their defaults (e.g. {"mix_noise_prob": 0}); with degrade
    degrade_options: dict[str, Any] = field(default_factory=dict)
    patch_size: int = 128
    batch_size: int = 8
    steps: int = 1000
    lr: float | None = None
    loss: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None  # constant, cosine, linear
    warmup: int | None = None  # linear lr warm-up steps (None: the recipe's)
    grad_clip: float | None = None  # 0 turns the recipe's clipping off
    adversarial: bool = True
    n_critic: int | None = None  # critic updates per generator step (GAN recipes)
    width: str = "default"  # "default", "tiny" (the arch's tiny_config)
    arch_config: dict[str, Any] = field(default_factory=dict)
    critic_config: dict[str, Any] = field(default_factory=dict)  # discriminator kwargs
    resume: bool = False
    init: str | None = None  # start from this model (anything `restore --model` accepts)
    freeze: tuple[str, ...] = ()  # parameter-name prefixes that are not trained
    vgg_weights: Path | None = None
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None  # None: the measured choice (see training.precision)
    compile: bool = False
    seed: int = 0
    val_every: int | None = None  # None: the resumed run's own, else DEFAULT_EVERY
    ckpt_every: int | None = None
    log_every: int | None = None
    val_fraction: float = 0.1
    val_images: int = 32
    val_crops: int = 1  # validation crops per image (the centre, then around it; up to 9)
    # training patches over which BatchNorm statistics are recomputed before each
    # validation (training.batchnorm); 0 keeps the running averages
    bn_calibration: int = 512
    # BatchNorm in eval mode while training: statistics recomputed once before the first step,
    # then fixed (for fine-tuning: no train/test mismatch, no drift with the last batches)
    freeze_bn: bool = False
    cache: bool | None = None  # None: cache decoded images when they fit in ~1 GiB
    stop_after: int | None = None  # stop after this many steps in this call (time-boxing)
    progress: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
        }


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    step: int
    steps: int
    last_loss: float
    best_psnr: float | None
    perceptual: str
    precision: str
    channels_last: bool
    patches_per_s: float
    problems: list[str] = field(default_factory=list)
    new_steps: int = 0  # steps taken by this call (0: a resumed run was already complete)
    blurry_psnr: float | None = None  # the blurry inputs' PSNR on the same validation pairs
    arch: str = ""
    init: dict[str, Any] | None = None  # the lineage of a warm-started run
    device: str = ""  # where it trained, e.g. "cpu" or "cuda:0"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["run_dir"], out["model_path"] = str(self.run_dir), str(self.model_path)
        # the shape every command's JSON gives its skipped inputs
        out["skipped"] = [
            dict(zip(("path", "error"), p.split(": ", 1), strict=False)) for p in self.problems
        ]
        return out


def check_numbers(config: TrainConfig) -> None:
    """Refuse NaN, infinite or negative optimiser settings before anything is built."""
    checks = {"lr": (config.lr, False), "weight_decay": (config.weight_decay, True)}
    checks["grad_clip"] = (config.grad_clip, True)
    for option, (value, zero_ok) in checks.items():
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            bound = ">= 0" if zero_ok else "> 0"
            raise UsageError(f"must be a finite number {bound}, got {value}", option=option)
    if config.bn_calibration < 0:
        raise UsageError(f"must be >= 0, got {config.bn_calibration}", option="bn_calibration")
    for name in DEFAULT_EVERY:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UsageError(f"must be >= 1, got {value}", option=name)
