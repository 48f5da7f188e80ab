"""Finished ``deblur train`` run folders as candidates for shipping (``--from-run``).

A model trained outside the pipeline (an ablation, a curriculum of two runs where the second
starts from the first's model) goes through the same gate as a GPU cohort's: evaluated on
the benchmark and the check photos, shipped only if it beats the shipped model. Its figures
come from the run folders: a run whose ``--init`` was another run folder's model counts
that run's steps too, and the recipe chains every stage's command, oldest first (``&&``).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from deblurcli.imageio import atomic_path
from deblurcli.pretraining.commands import config_args, read_result
from deblurcli.pretraining.describe import crops_text, dataset_text
from deblurcli.training.trainer import RESULT_NAME
from deblurcli.weights import sha256_file

CONFIG_NAME = "config.json"
# `deblur train` options that decide what a run learns, in the order a command shows them.
LEARNING_OPTIONS = (
    "data",
    "val",
    "degrade",
    "patch_size",
    "batch_size",
    "steps",
    "lr",
    "loss",
    "schedule",
    "warmup",
    "grad_clip",
    "seed",
    "precision",
    "val_every",
    "val_crops",
)


def run_stages(run: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(saved config, result) of ``run`` and of each run folder it was initialised from.

    Oldest first. The chain stops at an init that is not a run folder's model (a shipped
    model: the card's lineage names it); an init file changed since it was used is an error.
    """
    stages = []
    while True:
        saved = read_result(run / CONFIG_NAME, f"run folder {run}")
        stages.insert(0, (saved, read_result(run / RESULT_NAME, f"run folder {run}")))
        init = saved.get("init")
        if not init:
            return stages
        file = Path(init["file"])
        if not file.is_file():
            raise RuntimeError(f"{file}, the model {run} was initialised from, is gone")
        if not (file.parent / CONFIG_NAME).is_file():
            return stages
        if sha256_file(file) != init["sha256"]:
            raise RuntimeError(f"{file} changed after {run} was initialised from it")
        run = file.parent


def stage_command(saved: dict[str, Any]) -> str:
    """The ``deblur train`` command of a saved run config (the options that decide it)."""
    cfg = saved["config"]
    args = ["deblur", "train", "--arch", cfg["arch"]]
    for key in LEARNING_OPTIONS:
        if cfg.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(cfg[key])]
    args += config_args(cfg.get("degrade_options") or {}, "--degrade-option")
    if cfg.get("adversarial") is False:
        args.append("--no-adversarial")
    if cfg.get("init"):
        args += ["--init", str(cfg["init"])]
    for name in cfg.get("freeze") or []:
        args += ["--freeze", name]
    if cfg.get("freeze_bn"):
        args.append("--freeze-bn")
    args += config_args(cfg.get("arch_config") or {})
    return shlex.join(args)


def stages_dataset(stages: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """The manifest's ``dataset`` of a chain of runs: each stage's photos and patches."""
    parts, first = [], None
    for saved, _ in stages:
        cfg = saved["config"]
        if not cfg.get("degrade"):  # paired data: the pairs are the dataset
            parts.append(f"{cfg['patch_size']} px crops of the pairs in {cfg.get('data')}")
        elif first is None or cfg["data"] != first:
            parts.append(
                dataset_text(
                    Path(cfg["data"]), cfg["patch_size"], cfg["degrade"], cfg.get("degrade_options")
                )
            )
        else:
            parts.append(crops_text(cfg["patch_size"], cfg["degrade"], cfg.get("degrade_options")))
        first = first or cfg.get("data")
    return "; then ".join(parts)


def run_results(given: dict[str, Path], runs: Path) -> dict[str, dict[str, Any]]:
    """Copy each finished run's model into ``runs/<arch>``; its figures, as a bundle gives."""
    results = {}
    for arch, source in given.items():
        stages = run_stages(source)
        saved, last = stages[-1]
        if saved["config"]["arch"] != arch:
            raise RuntimeError(f"{source} trained {saved['config']['arch']}, not {arch}")
        run = runs / arch
        run.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", CONFIG_NAME):
            with atomic_path(run / name) as tmp:
                shutil.copyfile(source / name, tmp)
        patches = [result["step"] * s["config"]["batch_size"] for s, result in stages]
        seconds = sum(
            p / result["patches_per_s"] for p, (_, result) in zip(patches, stages, strict=True)
        )
        results[arch] = {
            "step": sum(result["step"] for _, result in stages),
            "patches": sum(patches),
            # over the whole chain, as "patches" is: the last stage alone may be a short one
            "patches_per_s": round(sum(patches) / seconds, 1),
            "best_psnr": last["best_psnr"],
            "precision": last["precision"],
            # run folders from before the device was recorded ran on the CPU
            "device": "CPU" if last.get("device", "cpu") in ("", "cpu") else last["device"],
            "command": " && ".join(stage_command(s) for s, _ in stages),
            "dataset": stages_dataset(stages),
        }
    return results
