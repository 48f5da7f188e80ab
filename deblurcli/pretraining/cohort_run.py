"""The GPU run: every arch of the plan at once, time-boxed, packed for the way back.

One :class:`~deblurcli.training.cohort.Cohort` trains all models on shared batches until
``minutes`` (counted from the process start) are nearly up; every checkpoint packs the
exports, ``metrics.csv`` and each model's figures into ``out`` as a bundle small enough for
the device machine to give back (at most 8 files of 16 MiB, 64 MiB in all).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import deblurcli
from deblurcli.imageio import atomic_write_bytes
from deblurcli.pretraining.pipeline import Paths
from deblurcli.pretraining.plan import planned_model
from deblurcli.training.cohort import Cohort
from deblurcli.training.trainer import TrainConfig
from deblurcli.weights.bundle import write_bundle
from deblurcli.weights.manifest import load_manifest, manifest_path

log = logging.getLogger("train_pretrained")
# What the device machine gives back: at most 8 files, 16 MiB each, 64 MiB in all.
RETURN_MAX_FILES = 8
RETURN_MAX_FILE_BYTES = 16 * 2**20
RETURN_MAX_TOTAL_BYTES = 64 * 2**20
_FINAL_RESERVE_S = 10.0  # logging and the limit check after the cohort has packed


@dataclass
class CohortOptions:
    """A cohort run: where it packs, its time box, device, widths and the plan's overrides."""

    out: Path
    minutes: float
    started: float  # time.perf_counter() at the process start: the time box counts start-up
    command: str  # recorded in the bundle (the recipe of every model it ships)
    device: str = "auto"
    width: str = "default"
    max_rounds: int | None = None
    cohort: dict[str, Any] | None = None  # the plan's [cohort] table with the overrides


def warm_start(arch: str, plan: dict[str, Any], width: str, manifest: Path) -> str | None:
    """The shipped model to start from: the one of ``arch`` when the plan's config is its."""
    if width != "default":
        return None
    entries = [e for e in load_manifest(manifest).entries if e.name == arch and e.arch == arch]
    if not entries or not entries[0].package_path.is_file():
        return None
    if planned_model(arch, dict(entries[0].config)) != planned_model(arch, plan["config"]):
        return None
    # By name where the name resolves to it (the lineage then records the manifest name).
    bundled = manifest.resolve() == manifest_path().resolve()
    return arch if bundled else str(entries[0].package_path)


def train_config(
    arch: str, plan: dict[str, Any], cohort: dict[str, Any], paths: Paths, width: str, device: str
) -> TrainConfig:
    """The :class:`TrainConfig` of ``arch`` for an in-process (cohort) run of the plan.

    ``cohort``: the plan's ``[cohort]`` settings (patch and batch size, workers, warm-up)
    with the command line's overrides. Warm-started models get the warm-up: a fresh Adam's
    first steps move every weight by about the learning rate and undo a trained model.
    """
    init = warm_start(arch, plan, width, paths.manifest)
    options = {
        k: plan[k] for k in ("lr", "loss", "schedule", "n_critic") if plan.get(k) is not None
    }
    if plan.get("vgg_weights"):
        options["vgg_weights"] = Path(plan["vgg_weights"]).expanduser()
    return TrainConfig(
        arch=arch,
        out=paths.runs / arch,
        data=paths.train_photos,
        val=paths.val_photos,
        degrade=plan["degrade"],
        degrade_options=dict(plan.get("degrade_options", {})),
        patch_size=cohort.get("patch_size", plan["patch_size"]),
        batch_size=cohort.get("batch_size", plan["batch_size"]),
        seed=plan["seed"],
        precision=plan["precision"],
        device=device,
        workers=cohort.get("workers", 0),
        width=width,
        arch_config=dict(plan["config"]) if width == "default" else {},
        adversarial=plan.get("adversarial") is not False,
        init=init,
        warmup=cohort.get("warmup") if init else None,
        freeze_bn=bool(plan.get("freeze_bn")) and init is not None,
        val_images=8,
        val_crops=cohort.get("val_crops", 1),
        # Every loader worker keeps the decoded photos: redecoding a photo per patch would
        # cost more than its blur (the 23 photos take ~0.4 GB per worker).
        cache=True,
        **options,
    )


def first_stage(cohort: dict[str, Any]) -> tuple[str, float] | None:
    """The plan's curriculum: (blur kind, share of the time) before the mix, or None."""
    kind = cohort.get("first_degrade")
    share = float(cohort.get("first_share", 0.0))
    return (kind, share) if kind and share > 0 else None


def return_limit_problems(folder: Path) -> list[str]:
    """Why ``folder`` could not come back whole from the device machine (empty: it can)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    problems = []
    if len(files) > RETURN_MAX_FILES:
        problems.append(f"{len(files)} files (at most {RETURN_MAX_FILES})")
    for f in files:
        if f.stat().st_size > RETURN_MAX_FILE_BYTES:
            problems.append(f"{f.name}: {f.stat().st_size} bytes (at most 16 MiB)")
        if len(f.relative_to(folder).parts) > 2:
            problems.append(f"{f.relative_to(folder)}: deeper than two folders")
    total = sum(f.stat().st_size for f in files)
    if total > RETURN_MAX_TOTAL_BYTES:
        problems.append(f"{total} bytes in all (at most 64 MiB)")
    return problems


def merge_metrics(files: dict[str, Path], target: Path) -> None:
    """The ``metrics.csv`` files (arch → path) as one file with an ``arch`` column."""
    buf = io.StringIO()
    writer = None
    for arch, path in files.items():
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if writer is None:
                    writer = csv.DictWriter(buf, fieldnames=["arch", *row])
                    writer.writeheader()
                writer.writerow({"arch": arch, **row})
    atomic_write_bytes(target, buf.getvalue().encode())


def cohort_figures(cohort: Cohort) -> dict[str, Any]:
    """Per-model figures of a cohort so far, for the bundle index and the summary."""
    figures: dict[str, Any] = {}
    for arch, trainer in cohort.trainers.items():
        cfg = trainer.cfg
        saved = cfg.out / "config.json"
        figures[arch] = {
            "step": trainer.step,
            "patches": trainer.step * cfg.batch_size,
            "patches_per_s": round(trainer.rate, 1),
            "best_psnr": trainer.best_psnr,
            "precision": trainer.prec.name,
            "device": str(trainer.device),
            "init": cfg.init,
            "error": cohort.errors.get(arch),
            "config_json": json.loads(saved.read_text(encoding="utf-8"))
            if saved.is_file()
            else None,
        }
    return figures


def pack_cohort(cohort: Cohort, options: CohortOptions) -> None:
    """Write the bundle of every exported model, metrics.csv and the figures into ``out``."""
    models = {
        arch: t.run_dir / "model.safetensors"
        for arch, t in cohort.trainers.items()
        if (t.run_dir / "model.safetensors").is_file()
    }
    extra = {
        "command": options.command,
        "figures": cohort_figures(cohort),
        "rounds": cohort.rounds,
        "loader_wait_s": round(cohort.loader_wait_s, 1),
        "echoed_rounds": cohort.echoed,
        "stages": [{"blur": kind, "from_round": start} for kind, start in cohort.stages],
        "wall_s": round(time.perf_counter() - options.started, 1),
    }
    write_bundle(models, options.out, extra=extra)
    metrics = {arch: cohort.trainers[arch].run_dir / "metrics.csv" for arch in models}
    merge_metrics(metrics, options.out / "metrics.csv")


def _log_to(out: Path) -> None:
    """Log to the console and to ``out/train.log`` (one of the files that come back)."""
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger().addHandler(handler)


def _log_figures(figures: dict[str, Any]) -> None:
    for arch, f in figures.items():
        best = "-" if f["best_psnr"] is None else f"{f['best_psnr']:.2f} dB"
        failed = f" FAILED {f['error']}" if f["error"] else ""
        log.info(
            "%s: %d steps, %d patches, %.1f patches/s, best val %s%s",
            *(arch, f["step"], f["patches"], f["patches_per_s"], best, failed),
        )


def cohort_run(plans: dict[str, dict[str, Any]], paths: Paths, options: CohortOptions) -> int:
    """Train every arch together, time-boxed, packing into ``options.out``. Exit status."""
    started, out = options.started, options.out
    out.mkdir(parents=True, exist_ok=True)
    _log_to(out)
    version = (Path(deblurcli.__file__).parent, torch.__version__, options.device)
    log.info("deblurcli from %s, torch %s, device %s", *version)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: autotune once
        log.info("GPU: %s", torch.cuda.get_device_name())
    cohort_plan = options.cohort or {}
    configs = {
        arch: train_config(arch, plan, cohort_plan, paths, options.width, options.device)
        for arch, plan in plans.items()
    }
    for arch, cfg in configs.items():
        log.info("%s: init %s, config %s", arch, cfg.init or "random", cfg.arch_config)
    deadline = started + options.minutes * 60 - _FINAL_RESERVE_S
    cohort = Cohort(
        configs,
        seconds=max(1.0, deadline - time.perf_counter()),
        checkpoint_s=cohort_plan.get("checkpoint_minutes", 1.5) * 60,
        calibrate_s=min(20.0, options.minutes * 60 / 10),
        max_rounds=options.max_rounds,
        echo=cohort_plan.get("echo", 0),
        on_checkpoint=lambda c: pack_cohort(c, options),
        first_stage=first_stage(cohort_plan),
    )
    cohort.seconds = max(1.0, deadline - time.perf_counter())  # building took a while
    built = time.perf_counter() - started
    log.info("models built in %.1f s; training for %.0f s", built, cohort.seconds)
    result = cohort.run()
    rate = result.rounds / max(result.seconds, 1e-9)
    log.info("%d rounds in %.0f s (%.2f rounds/s)", result.rounds, result.seconds, rate)
    _log_figures(cohort_figures(cohort))
    problems = return_limit_problems(out)
    for problem in problems:
        log.error("output folder over the device limits: %s", problem)
    sizes = [f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(out.iterdir())]
    log.info("done in %.0f s; %s", time.perf_counter() - started, ", ".join(sizes))
    return 1 if problems or result.errors or not result.results else 0
