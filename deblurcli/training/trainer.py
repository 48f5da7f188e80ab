"""The training loop: ``train(TrainConfig) -> TrainResult``.

A run folder holds ``config.json``, ``metrics.csv``, ``curves.png``, ``model.safetensors``
(best by validation PSNR; the export ``restore``/``eval`` load), ``last.safetensors`` and
``checkpoints/last.pt`` (model, optimisers, scaler, scheduler, RNG and step for an exact
``--resume``; plain tensors and numbers, loaded with ``weights_only=True``). Every file is
written atomically, so a kill never leaves a half-written checkpoint. ``init`` starts from a
pretrained model and ``freeze`` keeps parts of it fixed (see :mod:`.warmstart`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from deblurcli._process import die_with_parent
from deblurcli.archs import create, create_discriminator, get_spec
from deblurcli.data import dataset as ds
from deblurcli.errors import CheckpointError, TrainingDivergedError, UsageError
from deblurcli.imageio import atomic_path, atomic_write_bytes, find_images
from deblurcli.inference.device import pick_device
from deblurcli.locks import output_lock
from deblurcli.metrics import psnr
from deblurcli.training import distributed as dd
from deblurcli.training import losses as L
from deblurcli.training.precision import Precision, resolve
from deblurcli.training.recipes import Recipe, override, recipe_for_arch
from deblurcli.training.runlog import MetricsLog
from deblurcli.training.vgg import load_vgg19
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

log = logging.getLogger(__name__)
STATE_FILE = "checkpoints/last.pt"
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

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["run_dir"], out["model_path"] = str(self.run_dir), str(self.model_path)
        # the shape every command's JSON gives its skipped inputs
        out["skipped"] = [
            dict(zip(("path", "error"), p.split(": ", 1), strict=False)) for p in self.problems
        ]
        return out


def arch_config(config: TrainConfig, init_base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model config of a run; ``init_base``: the config of the model it starts from."""
    if init_base is not None:
        return init_config(config.arch, init_base, config.arch_config)
    spec = get_spec(config.arch)
    if config.width not in ("default", "tiny"):
        raise UsageError(f"--width must be 'default' or 'tiny', not {config.width!r}")
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
        raise UsageError(f"--config {given} does not fit {config.arch}: {exc}") from None


class _Outputs(nn.Module):
    """Wraps the model so DDP sees one forward that also returns edge logits (edgenet)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.with_edges = hasattr(model, "forward_with_edges")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, Any]:
        if self.with_edges:
            return self.model.forward_with_edges(x)
        return self.model(x), None, None


class Trainer:
    """One training run; :func:`train` is the public entry point."""

    def __init__(self, config: TrainConfig):
        source: InitSource | None = None
        if config.init is not None:
            if config.resume:
                raise UsageError(
                    "--init and --resume are exclusive: --resume continues a run (a run "
                    "started with --init keeps its weights and lineage), --init starts a new one"
                )
            if config.width != "default":
                raise UsageError(
                    "--width does not apply with --init: the model's config comes from "
                    f"{config.init}"
                )
            source = load_init(config.init)  # on the CPU; the model moves to the device below
            config = dataclasses.replace(config, arch=check_arch(source, config.arch, config.init))
        if config.arch is None and not (config.resume and config.out is not None):
            raise UsageError("give the architecture to train (--arch NAME) or --init MODEL")
        if config.out is None:
            config = dataclasses.replace(config, out=Path("runs") / config.arch)
        self.cfg = config
        self.run_dir = Path(config.out)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UsageError(f"--out {self.run_dir}: exists and is not a folder")
        self.device = pick_device(config.device)
        _check_numbers(config)
        self.dist = dd.init(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if not config.resume and self._state_path().exists():
            raise UsageError(
                f"{self.run_dir} already holds a training run; pass --resume to continue it "
                "or choose another --out"
            )
        self.state = self._load_state() if config.resume else None
        self.lineage = source.lineage if source is not None else None
        if self.state is not None:  # the run's own settings win over a changed command line
            config = self._merge_saved(config, json.loads(self.state["config"]))
            # The checkpoint wins over the init weights; the lineage goes on being recorded.
            saved_init = self.state.get("init")
            self.lineage = json.loads(saved_init) if saved_init else None
        config = dataclasses.replace(
            config, **{k: v for k, v in DEFAULT_EVERY.items() if getattr(config, k) is None}
        )
        self.cfg = config
        self.prec: Precision = resolve(config.arch, self.device, config.precision)
        if config.channels_last is not None:
            self.prec = dataclasses.replace(self.prec, channels_last=config.channels_last)
        self.recipe: Recipe = override(
            recipe_for_arch(config.arch),
            loss=config.loss,
            lr=config.lr,
            weight_decay=config.weight_decay,
            schedule=config.schedule,
            warmup=config.warmup,
            grad_clip=config.grad_clip,
            adversarial=None if config.adversarial else False,
            n_critic=config.n_critic,
        )
        if self.lineage is not None:  # the edge branch is trained already
            self.recipe = dataclasses.replace(self.recipe, edge_pretrain=0.0)
        torch.manual_seed(config.seed)  # identical initial weights (and critic) on every rank
        random.seed(config.seed)
        model = _build(config, self.lineage["config"] if self.lineage else None)
        if source is not None:
            load_init_weights(model, source, config.arch_config)
        self.frozen = freeze(model, config.freeze)
        self.model = model.to(self.device)
        self.multiple = getattr(self.model, "size_multiple", 1)
        if config.patch_size % self.multiple:
            nearest = -(-config.patch_size // self.multiple) * self.multiple
            raise UsageError(
                f"--patch-size must be a multiple of {self.multiple} for {config.arch} "
                f"(try {nearest})"
            )
        self.problems: list[str] = []
        # Data first: a bad --data is reported before any warning about the losses (VGG).
        self._setup_data()
        self._setup_losses()
        self._setup_optim()
        if self.dist.enabled:  # but different dropout/GP noise per rank
            torch.manual_seed(config.seed + 7919 * self.dist.rank)
        self.step = 0
        self.rate = 0.0
        self.last_terms: dict[str, float] = {}
        self._val_pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.best_psnr: float | None = None
        self.blurry_psnr: float | None = None
        if self.state is not None:
            self._restore(self.state)
        self.metrics = MetricsLog(self.run_dir, self.step if self.state is not None else None)

    # ---------------------------------------------------------------- setup
    def _merge_saved(self, config: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
        """The saved run's settings, except the ones that may change between sessions."""
        if config.arch is not None and saved.get("arch", config.arch) != config.arch:
            raise UsageError(
                f"{self.run_dir} holds a {saved['arch']} run; resume it with --arch "
                f"{saved['arch']} (or choose another --out for {config.arch})"
            )
        free = {"steps", "stop_after", "workers", "progress", "resume", "out", "device"}
        free |= {"vgg_weights", "cache"}
        # Cadence: the saved run's unless given again on this command line.
        free |= {k for k in DEFAULT_EVERY if getattr(config, k) is not None}
        data_keys = ("data", "sharp", "blurred", "val")
        if config.data is not None or config.sharp is not None:
            free |= set(data_keys)  # data re-given on the command line (e.g. moved)
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        merged = {k: v for k, v in saved.items() if k in fields and k not in free}
        for key in data_keys:
            if isinstance(merged.get(key), str):
                merged[key] = Path(merged[key])
        if "freeze" in merged:
            merged["freeze"] = tuple(merged["freeze"])
        return dataclasses.replace(config, **merged)

    def _setup_losses(self) -> None:
        names = [t.layer for t in self.recipe.losses if t.name == "perceptual"]
        self.vgg = None
        self.perceptual = "not used"
        terms = list(self.recipe.losses)
        if not names and self.cfg.vgg_weights is not None and self.dist.is_main:
            log.warning(
                "--vgg-weights ignored: %s has no perceptual term (add one with --loss)",
                self.recipe.describe().split(";")[0],
            )
        if names:
            self.vgg, how = load_vgg19(sorted(set(names)), self.cfg.vgg_weights)
            if self.vgg is None:
                fallback = self.recipe.perceptual_fallback
                msg = f"{how}: perceptual loss dropped"
                msg += f", using {fallback} instead" if fallback else ""
                if self.dist.is_main:
                    log.warning("%s (pass --vgg-weights PATH to use it)", msg)
                self.perceptual = "dropped"
                terms = [
                    dataclasses.replace(t, name=fallback, layer=None) if fallback else t
                    for t in terms
                    if t.name != "perceptual" or fallback
                ]
                # The fallback keeps the content weight (×100 for deblurgan = pix2pix's L1 λ).
            else:
                self.vgg = self.vgg.to(self.device)
                self.perceptual = f"vgg19 {','.join(sorted(set(names)))} from {how}"
        if not terms and self.recipe.adversarial is None:
            raise UsageError("no loss terms left (perceptual was dropped); pass --loss")
        self.terms = terms

    def _setup_optim(self) -> None:
        model: nn.Module = self.model
        if self.prec.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.net: nn.Module = _Outputs(model)
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.recipe.edge_pretrain > 0,
            )
        self.forward = torch.compile(self.net) if self.cfg.compile else self.net
        r = self.recipe
        opt_cls = torch.optim.AdamW if r.optimizer == "adamw" else torch.optim.Adam
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = opt_cls(trainable, lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.prec.scaler)
        self.critic = self.critic_opt = None
        if r.adversarial is not None:
            critic = create_discriminator(self.cfg.arch, **self._critic_kwargs())
            if critic is None:
                raise UsageError(f"{self.cfg.arch} has no discriminator for adversarial training")
            self.critic = critic.to(self.device)
            if self.prec.channels_last:
                self.critic = self.critic.to(memory_format=torch.channels_last)
            self.critic_opt = torch.optim.Adam(
                self.critic.parameters(), lr=r.adversarial.lr, betas=r.adversarial.betas
            )

    def _critic_kwargs(self) -> dict[str, Any]:
        # Tiny models get a critic of matching width so tests and CPU runs stay fast.
        kwargs: dict[str, Any] = {}
        if self.cfg.width == "tiny":
            kwargs = {"ndf": 8} if self.cfg.arch == "deblurgan" else {"width": 8}
        return {**kwargs, **self.cfg.critic_config}

    def _lr_factor(self, step: int) -> float:
        r, total = self.recipe, max(1, self.cfg.steps)
        warm = min(1.0, (step + 1) / r.warmup_steps) if r.warmup_steps else 1.0
        progress = min(1.0, step / total)
        if r.schedule == "cosine":
            import math

            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        if r.schedule == "linear":  # DeblurGAN: constant for the first half, then to zero
            return warm * min(1.0, 2 * (1 - progress))
        return warm

    def _setup_data(self) -> None:
        cfg = self.cfg
        if cfg.degrade:
            if cfg.data is None:
                raise UsageError("--degrade needs --data DIR of sharp images")
            examples = _degrade_sources(cfg.data)
        else:
            from deblurcli.data.pairs import find_pairs

            if cfg.sharp is not None or cfg.blurred is not None:
                scan = find_pairs(cfg.data, sharp=cfg.sharp, blurred=cfg.blurred)
            else:
                scan = _find_pairs_or_hint(cfg.data)
            self.problems += scan.problems
            examples = ds.examples_from_pairs(scan.pairs)
        examples, bad = ds.probe(examples)
        self.problems += bad
        if cfg.val is not None:
            val_examples = self._val_examples(cfg.val)
            train_examples = examples
        else:
            train_examples, val_examples = ds.split_by_name(examples, cfg.val_fraction)
        if not train_examples:
            raise ds.DataError("no readable training pairs (see the problems above)")
        cache = cfg.cache
        if cache is None:
            budget = 1 << 30
            cache = ds.estimated_bytes(train_examples) * max(1, cfg.workers) < budget
        self.train_set = ds.PairDataset(
            train_examples, cfg.patch_size, degrade=cfg.degrade, seed=cfg.seed, cache=cache
        )
        crop = ds.val_crop(cfg.patch_size, self.multiple)
        self.val_set = (
            ds.PairDataset(
                val_examples[: cfg.val_images],
                crop,
                train=False,
                degrade=cfg.degrade,
                seed=cfg.seed,
                cache=ds.estimated_bytes(val_examples[: cfg.val_images]) < 256 << 20,
            )
            if val_examples
            else None
        )

    def _val_examples(self, folder: Path) -> list[ds.Example]:
        if self.cfg.degrade:
            return _degrade_sources(folder)
        from deblurcli.data.pairs import find_pairs

        good, bad = ds.probe(ds.examples_from_pairs(find_pairs(folder).pairs))
        self.problems += bad
        return good

    def _loader(self) -> Iterator[Any]:
        sampler = ds.StepSampler(
            len(self.train_set),
            seed=self.cfg.seed,
            start=self.step * self.cfg.batch_size,
            rank=self.dist.rank,
            world=self.dist.world,
        )
        loader = DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.cfg.workers > 0,
            prefetch_factor=4 if self.cfg.workers > 0 else None,
            worker_init_fn=functools.partial(_worker_init, os.getpid()),
            # spawn: a worker forked from a process whose OpenMP/OpenCV thread pools are
            # running can deadlock on an inherited lock (seen with cv2 in tests). Not
            # forkserver: its workers are the server's children, so their parent watchdog
            # misses a killed trainer and they (and the server) linger forever.
            multiprocessing_context="spawn" if self.cfg.workers > 0 else None,
            # Its own generator: drawing worker seeds from the global RNG would shift the
            # dropout/GP random stream on --resume (samples are seeded by their keys anyway).
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        return iter(loader)

    # ---------------------------------------------------------------- state
    def _state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def _load_state(self) -> dict[str, Any] | None:
        path = self._state_path()
        if not path.is_file():
            raise UsageError(f"--resume: {path} does not exist (nothing to resume)")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # the restricted unpickler raises many types
            raise CheckpointError(
                f"{path}: unreadable training state ({type(exc).__name__})"
            ) from None

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.critic is not None and state.get("critic") is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_opt.load_state_dict(state["critic_optimizer"])
        self.step = int(state["step"])
        self.best_psnr = state.get("best_psnr")
        rng = state["rng"][min(self.dist.rank, len(state["rng"]) - 1)]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        random.setstate(_to_tuple(rng["python"]))

    def _save_state(self) -> None:
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "python": random.getstate(),
        }
        rngs = dd.gather(rng, self.dist)
        if not self.dist.is_main:
            return
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "critic_optimizer": self.critic_opt.state_dict() if self.critic_opt else None,
            "rng": rngs,
            "best_psnr": self.best_psnr,
            "config": json.dumps(self.cfg.to_json()),
            "init": json.dumps(self.lineage) if self.lineage is not None else None,
        }
        # Exports first: the training state is the commit marker of a complete checkpoint.
        save_checkpoint(self.model, self.run_dir / "last.safetensors", metadata=self._meta())
        if self.val_set is None or not (self.run_dir / "model.safetensors").exists():
            self._export()
        buffer = io.BytesIO()  # torch.save onto a full disk raises an opaque RuntimeError
        torch.save(state, buffer)
        atomic_write_bytes(self._state_path(), buffer.getvalue())

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
    def _autocast(self) -> AbstractContextManager[Any]:
        if self.prec.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.prec.dtype)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.prec.channels_last else t

    def _edge_stage(self) -> bool:
        return self.step < int(self.recipe.edge_pretrain * self.cfg.steps)

    def _critic_steps(self, blurred: torch.Tensor, sharp: torch.Tensor) -> float:
        adv = self.recipe.adversarial
        assert adv is not None and self.critic is not None and self.critic_opt is not None
        self.critic.requires_grad_(True)
        loss = torch.zeros(())
        for _ in range(adv.n_critic):
            with torch.no_grad(), self._autocast():
                fake = self.forward(blurred)[0]
            # fp32: the gradient penalty differentiates twice, bf16 is too coarse for it
            loss = L.critic_loss(adv.kind, self.critic, sharp, fake, adv.gp_weight)
            self.critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            dd.average_gradients(self.critic, self.dist)
            self.critic_opt.step()
        self.critic.requires_grad_(False)
        return float(loss.detach())

    def _losses(self, blurred: torch.Tensor, sharp: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._autocast():
            restored, fused, sides = self.forward(blurred)
            terms: dict[str, torch.Tensor] = {}
            edge_only = self._edge_stage()
            for term in self.terms:
                if edge_only and term.name != "edge_bce":
                    continue
                weight = 1.0 if edge_only else term.weight
                terms[term.name] = weight * self._term(term, restored, sharp, fused, sides)
            adv = self.recipe.adversarial
            if adv is not None and self.critic is not None:
                terms["adv"] = adv.weight * L.generator_adv_loss(adv.kind, self.critic, restored)
        return terms

    def _term(self, term: Any, restored, sharp, fused, sides) -> torch.Tensor:
        if term.name in L.PIXEL_LOSSES:
            return L.PIXEL_LOSSES[term.name](restored, sharp)
        if term.name == "perceptual":
            return L.PerceptualLoss(self.vgg, term.layer)(restored, sharp)
        if term.name == "edge_bce":
            if fused is None:
                raise UsageError(f"--loss edge_bce needs an edge branch; {self.cfg.arch} has none")
            return L.edge_loss(fused, sides, L.canny_edges(sharp))
        raise UsageError(f"unknown loss term {term.name!r}")

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor, Any]) -> dict[str, float]:
        """One optimisation step on a batch; returns the loss terms as floats."""
        blurred, sharp = self._to_device(batch[0]), self._to_device(batch[1])
        self.net.train()
        for module in self.frozen:  # frozen batch-norm statistics stay as they are
            module.eval()
        critic = None
        if self.recipe.adversarial is not None and not self._edge_stage():
            critic = self._critic_steps(blurred, sharp)
        terms = self._losses(blurred, sharp)
        loss = sum(terms.values(), torch.zeros((), device=self.device))
        if not dd.all_finite(loss, self.dist):
            detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise TrainingDivergedError(
                f"loss became {float(loss.detach())} at step {self.step + 1} ({detail}); "
                f"last good checkpoint: {self._last_good()}; try a lower --lr or --precision fp32"
            )
        if not loss.requires_grad:
            raise UsageError(
                f"at step {self.step + 1} the loss reaches no trainable parameter "
                f"(--freeze {' '.join(self.cfg.freeze)} froze them all); freeze less"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.grad_clip:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["loss"] = float(loss.detach())
        if critic is not None:
            out["critic"] = critic
        return out

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

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean PSNR (dB) of the model on the validation crops, in fp32.

        Also sets ``blurry_psnr``, the blurry inputs' mean PSNR on the same crops.
        """
        if self.val_set is None:
            return None
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
        cfg = self.cfg
        self.begin()
        end = cfg.steps if cfg.stop_after is None else min(cfg.steps, self.step + cfg.stop_after)
        batches = self.batches()
        try:
            with _progress(
                cfg.progress and self.dist.is_main, cfg.steps, self.step, self._patches_per_step
            ) as bar:
                while self.step < end:
                    self.advance(next(batches))
                    bar(self.step, self.last_terms, self.rate)
                    if self.step % cfg.val_every == 0 or self.step == end:
                        self._validate_and_export()
                    if self.step % cfg.ckpt_every == 0 or self.step == end:
                        self.save()
        finally:
            del batches  # shuts the worker processes down now, even on an error
        return self.finish()

    # ------------------------------------------------- step-level API (runs, cohorts)
    def begin(self) -> None:
        """Write the run folder's ``config.json`` and start the patches/s clock."""
        if self.dist.is_main and (self.state is None or self.step < self.cfg.steps):
            self._prepare_run_dir()  # a resume with nothing to train leaves the folder as it was
        self._start_step = self.step
        self._clock = (time.perf_counter(), self.step)

    @property
    def _patches_per_step(self) -> int:
        return self.cfg.batch_size * self.dist.world

    def batches(self) -> Iterator[Any]:
        """The endless stream of training batches (``(blurred, sharp, skipped)``)."""
        return self._loader()

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
        """Flush the log, draw the curves and describe the run."""
        if self.dist.is_main and self.step > self._start_step:  # nothing trained: no rewrite
            if self.last_terms and self.step % self.cfg.log_every:
                self._log_train(self.last_terms, self.rate)
            self.metrics.flush()
            self.metrics.plot(title=f"deblur train --arch {self.cfg.arch}: {self.run_dir}")
        dd.barrier(self.dist)
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
        )

    def _prepare_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out {self.run_dir}: cannot create it ({exc.strerror})") from None
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
            lr=self.sched.get_last_lr()[0],
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


def _find_pairs_or_hint(data: Path | None) -> Any:
    """``find_pairs(data)``; a folder of plain photos gets a pointer to --degrade."""
    from deblurcli.data.pairs import find_pairs

    if data is None:
        raise UsageError("give --data DIR, or --sharp DIR and --blurred DIR")
    try:
        return find_pairs(data)
    except UsageError as exc:
        if data.is_dir() and find_images(data, recursive=False):
            raise UsageError(
                f"{exc}; to train on sharp-only images, blur them on the fly with "
                "--degrade motion|gaussian|mix"
            ) from None
        raise


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def _worker_init(parent_pid: int, _: int) -> None:
    import cv2

    die_with_parent(parent_pid)  # a kill -9 of the trainer must not leave workers behind
    cv2.setNumThreads(1)  # workers already run in parallel; nested threads only contend


def _check_numbers(config: TrainConfig) -> None:
    """Refuse NaN, infinite or negative optimiser settings before anything is built."""
    checks = {"--lr": (config.lr, False), "--weight-decay": (config.weight_decay, True)}
    checks["--grad-clip"] = (config.grad_clip, True)
    for option, (value, zero_ok) in checks.items():
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            bound = ">= 0" if zero_ok else "> 0"
            raise UsageError(f"{option} must be a finite number {bound}, got {value}")
    for name in DEFAULT_EVERY:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _degrade_sources(folder: Path) -> list[ds.Example]:
    """Sharp images for --degrade; a paired folder contributes its sharp half only."""
    from deblurcli.data.pairs import find_pairs

    folder = Path(folder)
    if (folder / "sharp").is_dir():  # a `deblur blur` folder
        examples = ds.sharp_only_examples(folder / "sharp")
    else:
        try:  # GoPro-style sequences with blur/ and sharp/ side by side
            examples = [ds.Example(p.name, p.sharp) for p in find_pairs(folder).pairs]
        except UsageError:  # plain photos: every image is a sharp source
            return ds.sharp_only_examples(folder)
    log.warning(
        "%s holds sharp/blurred pairs: --degrade uses its %d sharp images only",
        folder,
        len(examples),
    )
    return examples


class _progress:
    """A Rich progress bar with loss terms and patches/s (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, start: int, batch: int):
        self.enabled, self.total, self.start, self.batch = enabled, total, start, batch
        self._progress: Any = None

    def __enter__(self) -> _progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            from deblurcli.cli._common import err_console

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=err_console,
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


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.arch`` and write the run folder; see :class:`TrainConfig`."""
    trainer = Trainer(config)
    try:
        with contextlib.ExitStack() as lock:
            if trainer.dist.is_main:  # one writer per run folder: rank 0 writes
                lock.enter_context(_run_folder_lock(trainer.run_dir))
                if trainer.state is None and trainer._state_path().exists():
                    raise UsageError(f"{trainer.run_dir}: another run started there meanwhile")
            return trainer.run()
    finally:
        dd.shutdown(trainer.dist)


@contextlib.contextmanager
def _run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s writer lock; a second train into it fails with one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir}: exists and is not a folder")
    held = contextlib.ExitStack()
    try:
        held.enter_context(output_lock(run_dir, "deblur train"))
    except OSError as exc:  # e.g. a path below a file
        raise UsageError(f"--out {run_dir}: cannot create it ({exc.strerror})") from None
    with held:
        yield
