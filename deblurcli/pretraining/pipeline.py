"""The pretrained pipeline on the CPU: train, export, evaluate and register each arch.

For each arch of the plan: ``deblur train`` (resumed after a kill; skipped when finished),
the best checkpoint as fp16 safetensors, ``deblur eval --benchmark`` (and on the check
photos), then the ``[[model]]`` entry in the manifest and the model card with a
before/after picture. A model's ``cpu_bf16`` keys (whether ``--precision auto`` runs it in
bf16 on a CPU with native bf16) are measured with ``deblur eval --benchmark --precision bf16``
against the fp32 evaluation. ``--from-bundle`` takes the models of a GPU cohort run instead of
training, and ships only those that beat the shipped ones.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from deblurcli.archs import count_parameters, get_spec, model_config
from deblurcli.evaluation.report import SUMMARY_NAME
from deblurcli.imageio import atomic_write_bytes
from deblurcli.inference.device import cpu_bf16_native
from deblurcli.pretraining.commands import (
    config_args,
    deblur_cmd,
    failure,
    read_result,
    run_lock,
    run_logged,
    shown,
)
from deblurcli.pretraining.describe import (
    before_after,
    benchmark_rule,
    config_overrides,
    dataset_text,
    restore_speed,
    run_recipe,
)
from deblurcli.pretraining.plan import planned_model
from deblurcli.pretraining.scores import (
    beats_shipped,
    comparison_row,
    comparison_table,
    flat_scores,
    model_row,
    quality_bars,
    summary_row,
    summary_table,
)
from deblurcli.training.trainer import RESULT_NAME
from deblurcli.weights import load_manifest, load_model, sha256_file
from deblurcli.weights.bundle import read_bundle_index, unpack_bundle
from deblurcli.weights.card import model_card
from deblurcli.weights.checkpoint import (
    ARCH_KEY,
    CONFIG_KEY,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from deblurcli.weights.manifest import CPU_BF16_MAX_DB, write_manifest

MAX_FILE_BYTES = 30 * 1000 * 1000
MAX_TOTAL_BYTES = 100 * 1000 * 1000


@dataclass(kw_only=True)
class Paths:
    """Where the pipeline reads photos and writes runs, weights, manifest and cards."""

    train_photos: Path
    val_photos: Path
    """The benchmark is built from these (``deblur eval --benchmark-photos``)."""
    check_photos: Path | None = None
    """Independent photos for a second evaluation."""
    runs: Path
    """One run folder per arch: training, exports, eval reports, ``pipeline.log``."""
    pretrained: Path
    """Where shipped weights go (``pretrained/`` beside the manifest)."""
    manifest: Path
    """The manifest that gets the entries."""
    docs: Path
    """Model cards and before/after pictures."""
    benchmark_cache: Path | None = None


@dataclass
class Options:
    """How :func:`run_all` runs: widths, concurrency, what to skip, the speed measurement."""

    width: str = "default"  # or "tiny" (smoke runs): the arch's tiny config, not the plan's
    jobs: int = 6
    train_only: bool = False
    speed_size: tuple[int, int] | None = (1920, 1080)
    speed_threads: int | None = None  # None: every core
    bundle: dict[str, dict[str, Any]] | None = None  # --from-bundle: arch -> training figures


@dataclass
class Outcome:
    """What one arch's pipeline produced."""

    arch: str
    file: Path | None = None
    entry: dict[str, Any] = field(default_factory=dict)
    bars: dict[str, bool] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None  # one line for the driver's summary


# ---------------------------------------------------------------- training


def train_command(arch: str, plan: dict[str, Any], paths: Paths, width: str) -> list[str]:
    """The ``deblur train`` command of ``arch`` (without ``--resume``)."""
    cmd = ["train", "--arch", arch, "--data", str(paths.train_photos)]
    cmd += ["--degrade", plan["degrade"], "--out", str(paths.runs / arch)]
    cmd += config_args(plan.get("degrade_options", {}), "--degrade-option")
    for key in ("patch_size", "batch_size", "steps", "seed", "val_every", "ckpt_every"):
        cmd += [f"--{key.replace('_', '-')}", str(plan[key])]
    cmd += ["--precision", plan["precision"], "--workers", "0"]
    if width != "default":  # smoke runs: the arch's tiny config, not the plan's
        cmd += ["--width", width]
    for key in ("lr", "loss", "schedule", "n_critic"):
        if plan.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(plan[key])]
    if plan.get("adversarial") is False:
        cmd.append("--no-adversarial")
    if plan.get("vgg_weights"):  # ImageNet VGG19 .pth for the perceptual terms, if you have it
        cmd += ["--vgg-weights", str(Path(plan["vgg_weights"]).expanduser())]
    if width == "default":
        cmd += config_args(plan["config"])
        if plan.get("init"):  # fine-tune from these weights (--width tiny would not fit them)
            cmd += ["--init", str(plan["init"])]
            if plan.get("freeze_bn"):  # fixed BatchNorm statistics: a fine-tuning setting
                cmd.append("--freeze-bn")
    return deblur_cmd(*cmd, "--json")


def check_same_model(arch: str, plan: dict[str, Any], run: Path, width: str) -> None:
    """Refuse to resume a run whose model differs from the plan's (the plan was edited)."""
    if width != "default":
        return
    saved = json.loads((run / "config.json").read_text(encoding="utf-8")).get("arch_config")
    saved, wanted = model_config(arch, saved or {}), planned_model(arch, plan["config"])
    if saved != wanted:
        raise RuntimeError(
            f"{run} was trained with config {saved}, the plan now says {wanted}; "
            "remove the run folder to train it afresh"
        )


def train(arch: str, plan: dict[str, Any], paths: Paths, width: str) -> dict[str, Any]:
    """Train (or resume, or skip when finished); the run's result with its ``command``."""
    run = paths.runs / arch
    done = run / "train_result.json"
    cmd = train_command(arch, plan, paths, width)
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("step", 0) >= plan["steps"] and result.get("command") == shown(cmd):
            return result
    with run_lock(run) as lock:
        resume = (run / "checkpoints" / "last.pt").is_file()
        if resume:
            check_same_model(arch, plan, run, width)
        args = cmd + (["--resume"] if resume else [])
        proc = run_logged(args, run / "pipeline.log", plan["threads"], keep=(lock,))
    if proc.returncode != 0:
        raise failure("deblur train", proc, run / "pipeline.log")
    result = {**read_result(run / RESULT_NAME, "deblur train"), "command": shown(cmd)}
    atomic_write_bytes(done, json.dumps(result, indent=2).encode())
    return result


def _holds_export(target: Path, model: torch.nn.Module, meta: dict[str, str]) -> bool:
    """Whether ``target`` already holds ``model`` in fp16 with the metadata ``meta``."""
    if not target.is_file():
        return False
    had = {k: v for k, v in read_metadata(target).items() if k not in (ARCH_KEY, CONFIG_KEY)}
    old = load_file(target)
    new = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    same = old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in new)
    return same and had == meta


def export_fp16(run: Path, target: Path) -> Path:
    """The run's best ``model.safetensors`` as fp16 at ``target`` (metadata kept).

    A ``target`` that holds the same already is left alone: safetensors writes metadata in a
    random order, and a new sha256 for the same weights would drop its ``cpu_bf16`` verdict
    on a CPU that cannot measure it again.
    """
    source = run / "model.safetensors"
    meta = {k: v for k, v in read_metadata(source).items() if k not in (ARCH_KEY, CONFIG_KEY)}
    model = load_checkpoint(source)
    if not _holds_export(target, model, meta):
        save_checkpoint(model, target, half=True, metadata=meta)
    size = target.stat().st_size
    if size > MAX_FILE_BYTES:
        target.unlink()
        raise RuntimeError(f"{target.name}: {size / 1e6:.1f} MB is over the 30 MB limit")
    return target


def evaluate(
    model: Path,
    photos: Path,
    paths: Paths,
    report: Path,
    log: Path,
    threads: int,
    precision: str = "fp32",
    families: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``deblur eval --benchmark`` of ``model`` and the unsharp baseline on ``photos``.

    ``families``: benchmark families other than the default three (``--benchmark-family``).
    The unsharp baseline is left out in another ``precision`` than fp32 (it has no weights).
    The summary is read from the report ``deblur eval`` writes into ``report``.
    """
    cmd = ["eval", "--benchmark", "--benchmark-photos", str(photos)]
    if paths.benchmark_cache is not None:
        cmd += ["--benchmark-dir", str(paths.benchmark_cache)]
    for family in families:
        cmd += ["--benchmark-family", family]
    cmd += ["--model", str(model)] + (["--model", "unsharp"] if precision == "fp32" else [])
    cmd = deblur_cmd(*cmd, "--precision", precision, "--report", str(report))
    (report / SUMMARY_NAME).unlink(missing_ok=True)  # never read a previous call's
    proc = run_logged(cmd, log, threads)
    if proc.returncode != 0:
        raise failure("deblur eval", proc, log)
    return {**read_result(report / SUMMARY_NAME, "deblur eval"), "command": shown(cmd)}


def cpu_bf16_keys(
    target: Path, paths: Paths, fp32: dict[str, Any], threads: int
) -> tuple[dict[str, Any], str | None]:
    """The ``cpu_bf16`` keys of the model at ``target`` (``ARCH.safetensors``) and a note.

    bf16 against ``fp32`` (the model's fp32 benchmark evaluation): the change of the mean
    benchmark PSNR, as the shipped models' deltas were measured. A CPU without native bf16
    cannot measure it; the manifest entry's keys then stay only if its weights are these.
    """
    arch, run = target.stem, paths.runs / target.stem
    if not get_spec(arch).bf16_safe:
        return {}, None  # --precision auto never runs it in bf16
    if not cpu_bf16_native():
        old = next((e for e in load_manifest(paths.manifest).entries if e.name == arch), None)
        if old is not None and old.sha256 == sha256_file(target) and old.cpu_bf16 is not None:
            kept = {"cpu_bf16": old.cpu_bf16, "cpu_bf16_psnr_delta": old.cpu_bf16_psnr_delta}
            return {k: v for k, v in kept.items() if v is not None}, None
        return {}, (
            "cpu_bf16 left out: this CPU has no native bf16 to measure it, so --precision "
            "auto runs the new weights in fp32 (re-score on a CPU with AVX512-BF16 or AMX)"
        )
    report, log = run / "eval_bf16", run / "pipeline.log"
    bf16 = evaluate(target, paths.val_photos, paths, report, log, threads, precision="bf16")
    delta = round(model_row(bf16)["psnr"] - model_row(fp32)["psnr"], 4) + 0.0  # no -0.0
    return {"cpu_bf16": abs(delta) <= CPU_BF16_MAX_DB, "cpu_bf16_psnr_delta": delta}, None


# ---------------------------------------------------------------- one arch


def _entry(
    target: Path, plan: dict[str, Any], paths: Paths, trained: dict, info: dict, scores: dict
) -> dict[str, Any]:
    """The manifest table of a freshly exported model (``target``: ``ARCH.safetensors``)."""
    arch = target.stem
    return {
        "name": arch,
        "arch": arch,
        "file": target.name,
        "sha256": sha256_file(target),
        "size": target.stat().st_size,
        "license": plan["license"],
        "default": True,
        "config": config_overrides(arch, info["arch_config"]),
        "dataset": trained.get("dataset")  # a run folder's, from its own stages
        or dataset_text(
            paths.train_photos, plan["patch_size"], plan["degrade"], plan.get("degrade_options")
        ),
        "recipe": trained["command"],
        "scores": scores,
        "benchmark": benchmark_rule(Path(info["eval"]["settings"]["data"])),
        "shipped": True,
        **{k: info[k] for k in ("cpu_bf16", "cpu_bf16_psnr_delta") if k in info},
        "description": f"{info['title']}, trained on {trained.get('device', 'CPU')} for "
        f"{trained['step']} steps; recipe {info['recipe']}",
    }


def train_and_evaluate(arch: str, plan: dict[str, Any], paths: Paths, options: Options) -> Outcome:
    """Train, export and evaluate one arch (cards and manifest are written by the caller)."""
    out = Outcome(arch)
    run = paths.runs / arch
    log = run / "pipeline.log"
    bundled = options.bundle is not None
    trained = options.bundle[arch] if bundled else train(arch, plan, paths, options.width)
    if options.train_only:
        return out
    # A cohort's model is staged in its run folder; it ships only if it beats the shipped one.
    staging = run / "export" if bundled else paths.pretrained
    target = export_fp16(run, staging / f"{arch}.safetensors")
    out.file = target
    model = load_model(target)
    info: dict[str, Any] = {
        "title": get_spec(arch).title,
        "arch_config": dict(model.arch_config),
        "default_config": get_spec(arch).default_config,
        "params": count_parameters(model),
        "recipe": run_recipe(run),
        "init": json.loads((run / "config.json").read_text(encoding="utf-8")).get("init"),
        "step": trained["step"],
        "precision": trained["precision"],
        "patches_per_s": trained["patches_per_s"],
        "threads": plan["threads"],
        "from_plan": not bundled,  # a cohort's or a run folder's model: its own command
    }
    threads = plan["threads"]
    info["eval"] = evaluate(target, paths.val_photos, paths, run / "eval", log, threads)
    scores = flat_scores(info["eval"])
    if paths.check_photos is not None:
        info["check"] = evaluate(target, paths.check_photos, paths, run / "check", log, threads)
        scores.update(flat_scores(info["check"], "check_"))
    # The camera family is scored beside the benchmark, not in it (nor in the bars or the
    # shipping rule): the nearest synthetic stand-in for a handheld photo.
    for prefix, photos in (("", paths.val_photos), ("check_", paths.check_photos)):
        if photos is not None:
            key = f"{prefix}camera"
            report = run / f"eval_{key}"
            info[key] = evaluate(target, photos, paths, report, log, threads, families=("camera",))
            camera = flat_scores(info[key], prefix)
            scores.update({k: v for k, v in camera.items() if k.startswith(key)})
    paths.docs.mkdir(parents=True, exist_ok=True)
    picture = (run / "export" if bundled else paths.docs) / f"{arch}.png"
    bench = Path(info["eval"]["settings"]["data"])
    info["picture_source"] = before_after(target, bench, picture)
    if not (bundled and refusal(scores, arch, paths.manifest)):  # measured for what may ship
        start = time.perf_counter()
        bf16, out.note = cpu_bf16_keys(target, paths, info["eval"], threads)
        info.update(bf16, cpu_bf16_eval_s=round(time.perf_counter() - start, 1))
    out.entry = _entry(target, plan, paths, trained, info, scores)
    out.info = info
    return out


def pick_default(choice: str | None, done: list[Outcome], manifest: Path) -> str | None:
    """The model ``--model`` means when omitted: the plan's arch, or ``best`` benchmark gain."""
    known = {e.name: e.scores for e in load_manifest(manifest).entries}
    known.update({o.arch: o.entry["scores"] for o in done})
    if choice == "best":
        gains = {n: s["psnr_gain"] for n, s in known.items() if "psnr_gain" in s}
        return max(gains, key=gains.get) if gains else None
    return choice if choice in known else None


def finish(outcome: Outcome, paths: Paths, is_default: bool) -> None:
    """The quality bars and the model card of one evaluated arch."""
    info = outcome.info
    info["bars"] = quality_bars(info["eval"], is_default)
    if info.get("check") is not None:
        bars = quality_bars(info["check"], is_default)
        info["bars"].update({f"{k} (check photos)": v for k, v in bars.items()})
    outcome.bars = info["bars"]
    picture = paths.docs / f"{outcome.arch}.png"
    card = model_card(
        outcome.arch,
        outcome.entry,
        info,
        str(picture),
        is_default,
        reproduce=info.get("from_plan", True),
    )
    atomic_write_bytes(paths.docs / f"{outcome.arch}.md", card.encode())
    result = paths.runs / outcome.arch / "pipeline_result.json"
    atomic_write_bytes(result, json.dumps(info, indent=2, default=str).encode())


def refusal(scores: dict[str, float], arch: str, manifest: Path) -> list[str]:
    """Why a model with ``scores`` does not beat the shipped ``arch`` (empty: it does)."""
    shipped = {e.name: e.scores for e in load_manifest(manifest).entries}
    return beats_shipped(scores, shipped.get(arch, {}))


def promote(outcome: Outcome, paths: Paths, shipped: dict[str, float]) -> bool:
    """Ship a cohort-trained model (weights and picture) if it beats the ``shipped`` scores."""
    reasons = beats_shipped(outcome.entry["scores"], shipped)
    if reasons:
        print(f"[{outcome.arch}] not shipped: {'; '.join(reasons)}", flush=True)
        return False
    assert outcome.file is not None
    for source, target in (
        (outcome.file, paths.pretrained / outcome.file.name),
        (outcome.file.with_suffix(".png"), paths.docs / f"{outcome.arch}.png"),
    ):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    outcome.file = paths.pretrained / outcome.file.name
    return True


def ship_and_report(evaluated: list[Outcome], paths: Paths) -> set[str]:
    """Ship what beats the shipped models; every returned model's figures to a report.

    ``bundle_report.md`` in the runs folder keeps the comparison of the models that were not
    shipped too: their figures are the point of a training run, shipped or not.
    """
    shipped = {e.name: e.scores for e in load_manifest(paths.manifest).entries}
    rows, ships = [], set()
    for o in evaluated:
        before = shipped.get(o.arch, {})
        if promote(o, paths, before):
            ships.add(o.arch)
        verdict = "shipped" if o.arch in ships else "not shipped"
        trained = f"{o.info['step']} steps, {o.info['patches_per_s']} patches/s"
        rows.append(comparison_row(o.arch, o.entry["scores"], before, trained, verdict))
    if rows:
        text = comparison_table(rows)
        atomic_write_bytes(paths.runs / "bundle_report.md", text.encode())
        print(text, flush=True)
    return ships


def bundle_results(bundle: Path, runs: Path) -> dict[str, dict[str, Any]]:
    """Unpack a cohort run's bundle into run folders; each arch's figures, as train() gives."""
    index = read_bundle_index(bundle)
    results = {}
    for arch, path in unpack_bundle(bundle, runs / "bundle").items():
        run = runs / arch
        run.mkdir(parents=True, exist_ok=True)
        os.replace(path, run / "model.safetensors")
        figures = index["figures"][arch]
        if figures.get("config_json"):
            text = json.dumps(figures["config_json"], indent=2)
            atomic_write_bytes(run / "config.json", text.encode())
        results[arch] = {**figures, "command": index.get("command", "")}
    return results


# ---------------------------------------------------------------- every arch


def _measure_speed(outcome: Outcome, options: Options) -> None:
    """The default model's restore speed, into its card info and manifest scores."""
    assert outcome.file is not None and options.speed_size is not None
    threads = options.speed_threads or os.cpu_count() or 1
    bf16 = outcome.entry.get("cpu_bf16")
    mp_per_s = restore_speed(outcome.file, options.speed_size, threads, cpu_bf16=bf16)
    outcome.info.update(speed_size=options.speed_size, mp_per_s=mp_per_s, speed_threads=threads)
    outcome.entry["scores"]["restore_mp_per_s"] = round(mp_per_s, 4)


def run_all(plans: dict[str, dict[str, Any]], paths: Paths, options: Options) -> int:
    """Every arch's pipeline, ``options.jobs`` at a time; then cards and manifest. Exit status."""

    def one(arch: str) -> Outcome:
        try:
            return train_and_evaluate(arch, plans[arch], paths, options)
        except Exception as exc:  # report and go on with the other archs
            return Outcome(arch, error=f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        outcomes = list(pool.map(one, list(plans)))
    done = [o for o in outcomes if o.error is None and o.entry]
    if options.bundle is not None:
        ships = ship_and_report(done, paths)  # once: it copies what ships
        done = [o for o in done if o.arch in ships]
    choice = next(iter(plans.values())).get("default_model")
    default = pick_default(choice, done, paths.manifest) if done else None
    best = next((o for o in done if o.arch == default), None)
    if best is not None and options.speed_size is not None:
        _measure_speed(best, options)  # only the default's: 1080p on one thread takes minutes
    for o in done:
        finish(o, paths, o.arch == default)
    for o in outcomes:
        bars = ", ".join(f"{k}: {'ok' if v else 'FAIL'}" for k, v in o.bars.items())
        print(f"[{o.arch}] {o.error or bars or 'trained'}", flush=True)
        if o.note and o in done:
            print(f"[{o.arch}] {o.note}", flush=True)
    if done:
        rows = [
            summary_row(
                o.arch + (" (default)" if o.arch == default else ""),
                o.entry["scores"],
                o.entry["size"],
                o.bars,
            )
            for o in done
        ]
        text = summary_table(rows)
        atomic_write_bytes(paths.runs / "summary.md", text.encode())
        print(text, flush=True)
    total = sum(o.entry["size"] for o in done)
    if total > MAX_TOTAL_BYTES:
        print(f"warning: shipped files total {total / 1e6:.1f} MB (> 100 MB)", flush=True)
    if done:
        write_manifest(paths.manifest, [o.entry for o in done], default)
        print(f"manifest: {len(done)} model(s) written to {paths.manifest}", flush=True)
    return 1 if any(o.error for o in outcomes) else 0
