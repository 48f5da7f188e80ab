"""Train, evaluate, export and register deblurcli's pretrained models in one command.

For each arch of the plan (``scripts/pretrained_plan.toml``, or ``--arch`` subset):

1. ``deblur train`` on the photo pool's train split with on-the-fly ``--degrade`` (the
   command is recorded; a killed run is continued with ``--resume`` on the next call),
2. export the best checkpoint as fp16 safetensors to ``deblurcli/pretrained/<arch>.safetensors``,
3. ``deblur eval --benchmark`` (and on ``--check-photos DIR``, kept apart from the pool),
4. the ``[[model]]`` entry in ``weights_manifest.toml`` and the model card
   ``docs/models/<arch>.md`` with a before/after picture.

Archs run concurrently (``--jobs``) with ``threads`` torch threads per process, so all six
fit on a small CPU in the background; rerunning the same command after a kill resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STARTED = time.perf_counter()  # a time-boxed run counts its start-up (torch is imported later)
REPO = Path(__file__).resolve().parent.parent
PLAN_PATH = Path(__file__).resolve().parent / "pretrained_plan.toml"
# This checkout's package, not whichever deblurcli happens to be installed.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The cards and manifest text are library code, shared with `deblur weights push`.
from deblurcli.weights.card import entry_block, model_card, toml_value  # noqa: E402, F401

MAX_FILE_BYTES = 30 * 1000 * 1000
MAX_TOTAL_BYTES = 100 * 1000 * 1000
_ARCH_KEYS = {"config", "config_null", "steps", "lr", "loss", "schedule", "adversarial", "n_critic"}
_ARCH_KEYS |= {"init"}
_DEFAULT_KEYS = {
    "degrade",
    "patch_size",
    "batch_size",
    "threads",
    "precision",
    "seed",
    "val_every",
    "ckpt_every",
    "budget_minutes",
    "license",
    "default_model",
    "vgg_weights",
}


_COHORT_KEYS = {"patch_size", "batch_size", "workers", "warmup", "checkpoint_minutes", "echo"}


class PlanError(ValueError):
    """The plan file is malformed."""


def load_plan(path: Path = PLAN_PATH) -> dict[str, dict[str, Any]]:
    """Per-arch settings: ``[defaults]`` merged under each ``[arch.NAME]`` table."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    defaults = data.get("defaults", {})
    unknown = set(defaults) - _DEFAULT_KEYS
    if unknown:
        raise PlanError(f"{path}: unknown [defaults] key(s) {', '.join(sorted(unknown))}")
    plans: dict[str, dict[str, Any]] = {}
    for arch, table in data.get("arch", {}).items():
        unknown = set(table) - _ARCH_KEYS - _DEFAULT_KEYS
        if unknown:
            raise PlanError(f"{path}: [arch.{arch}] unknown key(s) {', '.join(sorted(unknown))}")
        plan = copy.deepcopy(defaults)
        plan.update(copy.deepcopy(table))
        plan.setdefault("config", {})
        plan["config"].update({k: None for k in plan.pop("config_null", [])})
        plans[arch] = plan
    if not plans:
        raise PlanError(f"{path}: no [arch.NAME] tables")
    return plans


def load_cohort(path: Path = PLAN_PATH) -> dict[str, Any]:
    """The plan's ``[cohort]`` table: settings of the time-boxed run of every arch at once."""
    with open(path, "rb") as f:
        table = tomllib.load(f).get("cohort", {})
    unknown = set(table) - _COHORT_KEYS
    if unknown:
        raise PlanError(f"{path}: unknown [cohort] key(s) {', '.join(sorted(unknown))}")
    return table


@dataclass
class Paths:
    """Where the driver reads photos and writes runs, weights, manifest and cards."""

    runs: Path
    pretrained: Path
    manifest: Path
    docs: Path
    train_photos: Path
    val_photos: Path
    check_photos: Path | None = None
    benchmark_cache: Path | None = None


@dataclass
class Outcome:
    """What one arch's pipeline produced."""

    arch: str
    file: Path | None = None
    entry: dict[str, Any] = field(default_factory=dict)
    bars: dict[str, bool] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def deblur_cmd(*args: str) -> list[str]:
    """``deblur ARGS`` through the interpreter running this script (same environment)."""
    return [sys.executable, "-m", "deblurcli", *args]


def shown(cmd: list[str]) -> str:
    """A command as a user would type it: ``deblur ...``, paths under the repo relative."""
    if cmd[:3] == [sys.executable, "-m", "deblurcli"]:
        cmd = ["deblur", *cmd[3:]]
    prefix = f"{REPO}{os.sep}"
    return shlex.join(a[len(prefix) :] if a.startswith(prefix) else a for a in cmd)


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a worker process limited to ``threads`` threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # OPENCV_FOR_THREADS_NUM: OpenCV's own pool (the on-the-fly blur) ignores OMP_NUM_THREADS.
    for var in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "OPENCV_FOR_THREADS_NUM",
    ):
        env[var] = str(threads)
    return env


def run_logged(
    cmd: list[str], log: Path, threads: int, keep: tuple[int, ...] = ()
) -> subprocess.CompletedProcess:
    """Run ``cmd``, appending its output to ``log``; stdout is also returned.

    ``keep``: file descriptors the command inherits (a lock it should hold while it runs).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {shown(cmd)}\n")
        f.flush()
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
            env=thread_env(threads),
            pass_fds=keep,
            check=False,
        )
        f.write(proc.stdout)
    return proc


def failure(what: str, proc: subprocess.CompletedProcess, log: Path) -> RuntimeError:
    """The error of a failed command, quoting its last log line."""
    lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return RuntimeError(f"{what} failed (exit {proc.returncode}): {last} (log: {log})")


def last_json(text: str) -> dict[str, Any]:
    """The JSON object that ends a command's output (warnings may come before it)."""
    start = text.find("{")
    while start >= 0:
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    raise ValueError("no JSON in the output")


def config_args(config: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in config.items():
        out += ["--config", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return out


def train_command(arch: str, plan: dict[str, Any], paths: Paths, width: str) -> list[str]:
    """The ``deblur train`` command of ``arch`` (without ``--resume``)."""
    cmd = ["train", "--arch", arch, "--data", str(paths.train_photos)]
    cmd += ["--degrade", plan["degrade"], "--out", str(paths.runs / arch)]
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
    return deblur_cmd(*cmd, "--json")


def check_same_model(arch: str, plan: dict[str, Any], run: Path, width: str) -> None:
    """Refuse to resume a run whose model differs from the plan's (the plan was edited)."""
    from deblurcli.archs import model_config, resolve_config

    if width != "default":
        return
    saved = json.loads((run / "config.json").read_text(encoding="utf-8")).get("arch_config")
    saved = model_config(arch, saved or {})
    wanted = model_config(arch, resolve_config(arch, **plan["config"]))
    if saved != wanted:
        raise RuntimeError(
            f"{run} was trained with config {saved}, the plan now says {wanted}; "
            "remove the run folder to train it afresh"
        )


@contextlib.contextmanager
def run_lock(run: Path) -> Iterator[int]:
    """Hold ``RUN/.train.lock``; yields its fd for the trainer to inherit.

    Passed to ``deblur train``, the lock lives as long as the trainer, so a trainer left
    running by a killed driver also keeps a second driver off its run folder.
    """
    run.mkdir(parents=True, exist_ok=True)
    with open(run / ".train.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{run} is being trained by another process") from None
        yield f.fileno()


def train(arch: str, plan: dict[str, Any], paths: Paths, width: str) -> dict[str, Any]:
    """Train (or resume, or skip when finished); the ``deblur train --json`` result."""
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
    result = last_json(proc.stdout)
    result["command"] = shown(cmd)
    done.write_text(json.dumps(result, indent=2))
    return result


def export_fp16(run: Path, target: Path) -> Path:
    """The run's best ``model.safetensors`` as fp16 at ``target`` (metadata kept)."""
    from deblurcli.weights.checkpoint import (
        ARCH_KEY,
        CONFIG_KEY,
        load_checkpoint,
        read_metadata,
        save_checkpoint,
    )

    source = run / "model.safetensors"
    meta = {k: v for k, v in read_metadata(source).items() if k not in (ARCH_KEY, CONFIG_KEY)}
    save_checkpoint(load_checkpoint(source), target, half=True, metadata=meta)
    size = target.stat().st_size
    if size > MAX_FILE_BYTES:
        target.unlink()
        raise RuntimeError(f"{target.name}: {size / 1e6:.1f} MB is over the 30 MB limit")
    return target


def evaluate(model: Path, photos: Path, paths: Paths, log: Path, threads: int) -> dict[str, Any]:
    """``deblur eval --benchmark`` of ``model`` and the unsharp baseline on ``photos``."""
    cmd = ["eval", "--benchmark", "--benchmark-photos", str(photos)]
    if paths.benchmark_cache is not None:
        cmd += ["--benchmark-dir", str(paths.benchmark_cache)]
    cmd = deblur_cmd(*cmd, "--model", str(model), "--model", "unsharp", "--json")
    proc = run_logged(cmd, log, threads)
    if proc.returncode != 0:
        raise failure("deblur eval", proc, log)
    result = last_json(proc.stdout)
    result["command"] = shown(cmd)
    return result


def rows_by_kind(result: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(blurry input, unsharp baseline, model) rows of an eval summary."""
    rows = result["rows"]
    blurry = next(r for r in rows if r["kind"] == "input")
    unsharp = next(r for r in rows if r["key"] == "unsharp")
    model = next(r for r in rows if r["kind"] == "model")
    return blurry, unsharp, model


def flat_scores(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Manifest ``scores``: the model's PSNR/SSIM and gains, overall and per family."""
    blurry, unsharp, model = rows_by_kind(result)
    out = {
        "psnr": model["psnr"],
        "ssim": model["ssim"],
        "psnr_gain": model["psnr_gain"],
        "blurry_psnr": blurry["psnr"],
        "unsharp_psnr": unsharp["psnr"],
    }
    for family, values in sorted(model["families"].items()):
        out[f"{family}_psnr"] = values["psnr"]
        out[f"{family}_psnr_gain"] = values["psnr"] - blurry["families"][family]["psnr"]
    return {f"{prefix}{k}": round(float(v), 4) for k, v in out.items() if v is not None}


def quality_bars(result: dict[str, Any], default: bool) -> dict[str, bool]:
    """Issue #8's bars on one eval: mixed-set gain, each family, and unsharp for the default."""
    blurry, unsharp, model = rows_by_kind(result)
    bars = {"mixed gain >= 2.0 dB": model["psnr_gain"] >= 2.0}
    for family, values in sorted(model["families"].items()):
        bars[f"beats blurry on {family}"] = values["psnr"] > blurry["families"][family]["psnr"]
    if default:
        bars["mixed gain >= 3.0 dB (default)"] = model["psnr_gain"] >= 3.0
        for family, values in sorted(model["families"].items()):
            bars[f"beats unsharp on {family} (default)"] = (
                values["psnr"] > unsharp["families"][family]["psnr"]
            )
    return bars


def restore_speed(model_path: Path, size: tuple[int, int], threads: int) -> float:
    """Megapixels/s of ``deblur restore``'s default path (auto tiling, auto precision)."""
    import torch

    from deblurcli.inference import restore_tensor
    from deblurcli.weights import load_model

    torch.set_num_threads(threads)
    model = load_model(model_path)
    width, height = size
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    restore_tensor(model, image[..., :64, :64], device="cpu")  # warm-up
    start = time.perf_counter()
    restore_tensor(model, image, device="cpu")
    return width * height / 1e6 / (time.perf_counter() - start)


def before_after(model_path: Path, bench: Path, target: Path, crop: int = 160) -> str:
    """A [blurry | restored | sharp] strip of one motion-blurred benchmark crop."""
    import numpy as np

    from deblurcli.imageio import ImageData, find_images, read_image, write_image
    from deblurcli.inference import restore_tensor
    from deblurcli.weights import load_model

    sharp_files = find_images(bench / "sharp" / "motion") or find_images(bench / "sharp")
    sharp_path = sharp_files[0]
    rel = sharp_path.relative_to(bench / "sharp")
    sharp = read_image(sharp_path).pixels[..., :3]
    blurred = read_image(bench / "blurred" / rel).pixels[..., :3]
    h, w = sharp.shape[:2]
    size = min(crop, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    sharp, blurred = (a[top : top + size, left : left + size] for a in (sharp, blurred))
    import torch

    x = torch.from_numpy(np.ascontiguousarray(blurred.transpose(2, 0, 1)))[None].float()
    restored = restore_tensor(load_model(model_path), x, tile=0, device="cpu")
    restored = restored[0].numpy().transpose(1, 2, 0)
    gap = np.ones((size, 4, 3), np.float32)
    strip = np.concatenate([blurred, gap, restored, gap, sharp], axis=1).astype(np.float32)
    write_image(target, ImageData(np.clip(strip, 0, 1), bit_depth=8))
    return rel.as_posix()


def benchmark_rule(bench: Path) -> str:
    """How the benchmark at ``bench`` was built (its ``benchmark.json`` rule)."""
    try:
        info = json.loads((bench / "benchmark.json").read_text(encoding="utf-8"))
        return f"deblur eval --benchmark {info['rule']}, {info['pairs']} pairs"
    except (OSError, KeyError, ValueError):
        return "deblur eval --benchmark"


# ---------------------------------------------------------------- manifest


def _split_blocks(text: str) -> tuple[str, list[str]]:
    """(head, [[model]] blocks) of a manifest's text."""
    parts = text.split("\n[[model]]\n")
    if text.startswith("[[model]]\n"):
        return "", ["[[model]]\n" + p for p in text.split("[[model]]\n")[1:]]
    return parts[0].rstrip("\n") + "\n", ["[[model]]\n" + p for p in parts[1:]]


def write_manifest(path: Path, entries: list[dict[str, Any]], default: str | None) -> None:
    """Add or replace ``entries`` (by name) in the manifest at ``path``; set ``default``.

    Comments and other models are kept; the result is validated before it replaces the file.
    """
    from deblurcli.imageio import atomic_path
    from deblurcli.weights.manifest import parse_manifest

    head, blocks = _split_blocks(path.read_text(encoding="utf-8"))
    names = {e["name"] for e in entries}
    kept = [b for b in blocks if tomllib.loads(b)["model"][0]["name"] not in names]
    head_lines = [ln for ln in head.splitlines() if not ln.startswith("default =")]
    if default is not None:
        head_lines.append(f"default = {toml_value(default)}")
    body = [b.rstrip("\n") + "\n" for b in kept] + [entry_block(e) for e in entries]
    text = "\n".join(head_lines) + "\n\n" + "\n".join(body)
    parse_manifest(tomllib.loads(text), path)  # never write a manifest that does not load
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def config_overrides(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``config`` that differ from the registry default (None values dropped)."""
    from deblurcli.archs import get_spec

    default = get_spec(arch).default_config
    return {k: v for k, v in config.items() if v is not None and default.get(k) != v}


# ---------------------------------------------------------------- pipeline


def dataset_text(paths: Paths, plan: dict[str, Any]) -> str:
    from deblurcli.imageio import find_images

    names = sorted(p.stem for p in find_images(paths.train_photos))
    return (
        f"deblurcli photo pool, train split ({len(names)} photos: {', '.join(names)}); "
        f"random {plan['patch_size']} px crops blurred on the fly (--degrade {plan['degrade']})"
    )


def pipeline(arch: str, plan: dict[str, Any], paths: Paths, args: argparse.Namespace) -> Outcome:
    """Train, export and evaluate one arch (cards and manifest are written by the caller)."""
    from deblurcli.archs import count_parameters, get_spec
    from deblurcli.weights import load_model

    out = Outcome(arch)
    run = paths.runs / arch
    log = run / "pipeline.log"
    bundled = getattr(args, "bundle", None) is not None
    trained = args.bundle[arch] if bundled else train(arch, plan, paths, args.width)
    if args.train_only:
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
    }
    info["eval"] = evaluate(target, paths.val_photos, paths, log, plan["threads"])
    scores = flat_scores(info["eval"])
    if paths.check_photos is not None:
        info["check"] = evaluate(target, paths.check_photos, paths, log, plan["threads"])
        scores.update(flat_scores(info["check"], "check_"))
    from deblurcli.weights import sha256_file

    paths.docs.mkdir(parents=True, exist_ok=True)
    bench = Path(info["eval"]["settings"]["data"])
    picture = (run / "export" if bundled else paths.docs) / f"{arch}.png"
    info["picture_source"] = before_after(target, bench, picture)
    out.entry = {
        "name": arch,
        "arch": arch,
        "file": target.name,
        "sha256": sha256_file(target),
        "size": target.stat().st_size,
        "license": plan["license"],
        "default": True,
        "config": config_overrides(arch, model.arch_config),
        "dataset": dataset_text(paths, plan),
        "recipe": trained["command"],
        "scores": scores,
        "benchmark": benchmark_rule(bench),
        "shipped": True,
        "description": f"{info['title']}, trained on {trained.get('device', 'CPU')} for "
        f"{trained['step']} steps; recipe {info['recipe']}",
    }
    out.info = info
    return out


def run_recipe(run: Path) -> str:
    """The recipe the run really trained with: its saved recipe, overrides and fallbacks."""
    from deblurcli.training.recipes import Adversarial, LossTerm, Recipe
    from deblurcli.weights.checkpoint import read_metadata

    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))["recipe"]
    saved["losses"] = tuple(LossTerm(**t) for t in saved["losses"])
    saved["betas"] = tuple(saved["betas"])
    if saved.get("adversarial"):
        saved["adversarial"] = Adversarial(**saved["adversarial"])
    text = Recipe(**saved).describe()
    if read_metadata(run / "model.safetensors").get("perceptual") == "dropped":
        fallback = saved.get("perceptual_fallback")
        text += f"; no VGG19 weights: perceptual term {f'→ {fallback}' if fallback else 'dropped'}"
    return text


def pick_default(choice: str | None, done: list[Outcome], manifest: Path) -> str | None:
    """The model ``--model`` means when omitted: the plan's arch, or ``best`` benchmark gain."""
    with open(manifest, "rb") as f:
        known = {m["name"]: m.get("scores", {}) for m in tomllib.load(f).get("model", [])}
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
    card = model_card(outcome.arch, outcome.entry, info, str(picture), is_default)
    (paths.docs / f"{outcome.arch}.md").write_text(card, encoding="utf-8")
    result = paths.runs / outcome.arch / "pipeline_result.json"
    result.write_text(json.dumps(info, indent=2, default=str))


def summary_table(done: list[Outcome], default: str | None) -> str:
    """A markdown table of every model's benchmark numbers (for the README)."""
    cols = ["psnr_gain", "gaussian_psnr_gain", "motion_psnr_gain", "noisy_psnr_gain"]
    cols += ["check_psnr_gain", "restore_mp_per_s"]
    lines = [
        "| model | PSNR dB | gain | gaussian | motion | noisy | check photos | MP/s 1080p | MB "
        "| bars |",
        "|---|" + "---|" * 9,
    ]
    for o in done:
        s = o.entry["scores"]
        cells = [
            "-" if c not in s else f"{s[c]:+.2f}" if "gain" in c else f"{s[c]:.3f}" for c in cols
        ]
        passed = sum(o.bars.values())
        name = o.arch + (" (default)" if o.arch == default else "")
        lines.append(
            f"| {name} | {s['psnr']:.2f} | {' | '.join(cells)} | {o.entry['size'] / 1e6:.1f} "
            f"| {passed}/{len(o.bars)} |"
        )
    return "\n".join(lines) + "\n"


# A new model must beat the shipped one by this much: a few steps of fine-tuning move the
# gain by a thousandth of a dB either way, which is noise, not a better model.
SHIP_MARGIN_DB = 0.05


def beats_shipped(scores: dict[str, float], shipped: dict[str, float]) -> list[str]:
    """Why ``scores`` do not beat the ``shipped`` model's (empty: they beat it everywhere).

    Both the benchmark gain and, where both were measured, the check photos' gain must be
    higher by ``SHIP_MARGIN_DB``: a model better on one and not on the other is not shipped.
    """
    reasons = []
    for key in ("psnr_gain", "check_psnr_gain"):
        if key in scores and key in shipped and scores[key] < shipped[key] + SHIP_MARGIN_DB:
            reasons.append(
                f"{key} {scores[key]:+.3f} dB is not {SHIP_MARGIN_DB} dB above the shipped "
                f"{shipped[key]:+.3f} dB"
            )
    return reasons


def promote(outcome: Outcome, paths: Paths) -> bool:
    """Ship a cohort-trained model (weights and picture) if it beats the shipped one."""
    import shutil

    with open(paths.manifest, "rb") as f:
        entries = {m["name"]: m for m in tomllib.load(f).get("model", [])}
    shipped = entries.get(outcome.arch, {}).get("scores", {})
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


def bundle_results(bundle: Path, runs: Path) -> dict[str, dict[str, Any]]:
    """Unpack a cohort run's bundle into run folders; each arch's result, as train() gives."""
    from deblurcli.weights.bundle import read_bundle_index, unpack_bundle

    index = read_bundle_index(bundle)
    results = {}
    for arch, path in unpack_bundle(bundle, runs / "bundle").items():
        run = runs / arch
        run.mkdir(parents=True, exist_ok=True)
        os.replace(path, run / "model.safetensors")
        figures = index["figures"][arch]
        if figures.get("config_json"):
            (run / "config.json").write_text(json.dumps(figures["config_json"], indent=2))
        results[arch] = {**figures, "command": index.get("command", "")}
    return results


def run_all(plans: dict[str, dict[str, Any]], paths: Paths, args: argparse.Namespace) -> int:
    """Every arch's pipeline, ``args.jobs`` at a time; then cards and manifest. Exit status."""

    def one(arch: str) -> Outcome:
        try:
            return pipeline(arch, plans[arch], paths, args)
        except Exception as exc:  # report and go on with the other archs
            return Outcome(arch, error=f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(one, list(plans)))
    done = [o for o in outcomes if o.error is None and o.entry]
    if getattr(args, "bundle", None) is not None:
        done = [o for o in done if promote(o, paths)]
    choice = next(iter(plans.values())).get("default_model")
    default = pick_default(choice, done, paths.manifest) if done else None
    best = next((o for o in done if o.arch == default), None)
    if best is not None and args.speed_size is not None:
        # Only the default model's speed is reported: 1080p on one thread takes minutes.
        threads = args.speed_threads or os.cpu_count() or 1
        mp_per_s = restore_speed(best.file, args.speed_size, threads)
        best.info.update(speed_size=args.speed_size, mp_per_s=mp_per_s, speed_threads=threads)
        best.entry["scores"]["restore_mp_per_s"] = round(mp_per_s, 4)
    for o in done:
        finish(o, paths, o.arch == default)
    for o in outcomes:
        bars = ", ".join(f"{k}: {'ok' if v else 'FAIL'}" for k, v in o.bars.items())
        print(f"[{o.arch}] {o.error or bars or 'trained'}", flush=True)
    if done:
        summary = paths.runs / "summary.md"
        summary.write_text(summary_table(done, default), encoding="utf-8")
        print(summary.read_text(encoding="utf-8"), flush=True)
    total = sum(o.entry["size"] for o in done)
    if total > MAX_TOTAL_BYTES:
        print(f"warning: shipped files total {total / 1e6:.1f} MB (> 100 MB)", flush=True)
    if done:
        write_manifest(paths.manifest, [o.entry for o in done], default)
        print(f"manifest: {len(done)} model(s) written to {paths.manifest}", flush=True)
    return 1 if any(o.error for o in outcomes) else 0


# ---------------------------------------------------------------- GPU cohort run

# What the device machine gives back: at most 8 files, 16 MiB each, 64 MiB in all.
RETURN_MAX_FILES = 8
RETURN_MAX_FILE_BYTES = 16 * 2**20
RETURN_MAX_TOTAL_BYTES = 64 * 2**20
_FINAL_RESERVE_S = 10.0  # logging and the limit check after the cohort has packed


def train_config(
    arch: str, plan: dict[str, Any], cohort: dict[str, Any], paths: Paths, width: str, device: str
):
    """The :class:`TrainConfig` of ``arch`` for an in-process (cohort) run of the plan.

    ``cohort``: the plan's ``[cohort]`` settings (patch and batch size, workers, warm-up)
    with the command line's overrides. Warm-started models get the warm-up: a fresh Adam's
    first steps move every weight by about the learning rate and undo a trained model.
    """
    from deblurcli.training.trainer import TrainConfig

    init = warm_start(arch, plan, width, paths.manifest)
    options: dict[str, Any] = {}
    for key in ("lr", "loss", "schedule", "n_critic"):
        if plan.get(key) is not None:
            options[key] = plan[key]
    if plan.get("vgg_weights"):
        options["vgg_weights"] = Path(plan["vgg_weights"]).expanduser()
    return TrainConfig(
        arch=arch,
        out=paths.runs / arch,
        data=paths.train_photos,
        val=paths.val_photos,
        degrade=plan["degrade"],
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
        val_images=8,
        # Every loader worker keeps the decoded photos: redecoding a photo per patch would
        # cost more than its blur (the 23 photos take ~0.4 GB per worker).
        cache=True,
        **options,
    )


def warm_start(arch: str, plan: dict[str, Any], width: str, manifest: Path) -> str | None:
    """The shipped model to start from: the one of ``arch`` when the plan's config is its."""
    from deblurcli.archs import model_config, resolve_config
    from deblurcli.weights.manifest import load_manifest, manifest_path

    if width != "default":
        return None
    entries = [e for e in load_manifest(manifest).entries if e.name == arch and e.arch == arch]
    if not entries or not entries[0].package_path.is_file():
        return None

    def model_keys(config: dict[str, Any]) -> dict[str, Any]:
        return model_config(arch, resolve_config(arch, **config))

    if model_keys(dict(entries[0].config)) != model_keys(plan["config"]):
        return None
    # By name where the name resolves to it (the lineage then records the manifest name).
    bundled = manifest.resolve() == manifest_path().resolve()
    return arch if bundled else str(entries[0].package_path)


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
    import csv
    import io

    from deblurcli.imageio import atomic_write_bytes

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


def cohort_figures(cohort: Any) -> dict[str, Any]:
    """Per-model figures of a cohort so far, for the bundle index and the summary."""
    figures: dict[str, Any] = {}
    for arch, trainer in cohort.trainers.items():
        cfg = trainer.cfg
        figures[arch] = {
            "step": trainer.step,
            "patches": trainer.step * cfg.batch_size,
            "patches_per_s": round(trainer.rate, 1),
            "best_psnr": trainer.best_psnr,
            "precision": trainer.prec.name,
            "device": str(trainer.device),
            "init": cfg.init,
            "error": cohort.errors.get(arch),
            "config_json": json.loads((cfg.out / "config.json").read_text(encoding="utf-8"))
            if (cfg.out / "config.json").is_file()
            else None,
        }
    return figures


def pack_cohort(cohort: Any, out: Path, started: float) -> None:
    """Write the bundle of every exported model, metrics.csv and the figures into ``out``."""
    from deblurcli.weights.bundle import write_bundle

    models = {
        arch: t.run_dir / "model.safetensors"
        for arch, t in cohort.trainers.items()
        if (t.run_dir / "model.safetensors").is_file()
    }
    extra = {
        "command": shlex.join(["python", "scripts/train_pretrained.py", *sys.argv[1:]]),
        "figures": cohort_figures(cohort),
        "rounds": cohort.rounds,
        "loader_wait_s": round(cohort.loader_wait_s, 1),
        "echoed_rounds": cohort.echoed,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_bundle(models, out, extra=extra)
    metrics = {arch: cohort.trainers[arch].run_dir / "metrics.csv" for arch in models}
    merge_metrics(metrics, out / "metrics.csv")


def cohort_run(plans: dict[str, dict[str, Any]], paths: Paths, args: argparse.Namespace) -> int:
    """``--minutes``: train every arch together, time-boxed, and pack the results in --out."""
    import logging

    import torch

    from deblurcli.training.cohort import Cohort

    started = STARTED
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger().addHandler(handler)
    log = logging.getLogger("train_pretrained")
    import deblurcli

    log.info(
        "deblurcli from %s, torch %s, device %s",
        Path(deblurcli.__file__).parent,
        torch.__version__,
        args.device,
    )
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: autotune once
        log.info("GPU: %s", torch.cuda.get_device_name())
    cohort_plan = load_cohort(args.plan)
    for key in ("patch_size", "batch_size", "workers", "checkpoint_minutes"):
        if getattr(args, key) is not None:
            cohort_plan[key] = getattr(args, key)
    configs = {
        arch: train_config(arch, plan, cohort_plan, paths, args.width, args.device)
        for arch, plan in plans.items()
    }
    for arch, cfg in configs.items():
        log.info("%s: init %s, config %s", arch, cfg.init or "random", cfg.arch_config)
    deadline = started + args.minutes * 60 - _FINAL_RESERVE_S
    cohort = Cohort(
        configs,
        seconds=max(1.0, deadline - time.perf_counter()),
        checkpoint_s=cohort_plan.get("checkpoint_minutes", 1.5) * 60,
        calibrate_s=min(20.0, args.minutes * 60 / 10),
        max_rounds=args.max_rounds,
        echo=cohort_plan.get("echo", 0),
        on_checkpoint=lambda c: pack_cohort(c, out, started),
    )
    cohort.seconds = max(1.0, deadline - time.perf_counter())  # building took a while
    log.info(
        "models built in %.1f s; training for %.0f s", time.perf_counter() - started, cohort.seconds
    )
    result = cohort.run()
    figures = cohort_figures(cohort)
    log.info(
        "%d rounds in %.0f s (%.2f rounds/s)",
        result.rounds,
        result.seconds,
        result.rounds / max(result.seconds, 1e-9),
    )
    for arch, f in figures.items():
        log.info(
            "%s: %d steps, %d patches, %.1f patches/s, best val %s%s",
            arch,
            f["step"],
            f["patches"],
            f["patches_per_s"],
            "-" if f["best_psnr"] is None else f"{f['best_psnr']:.2f} dB",
            f" FAILED {f['error']}" if f["error"] else "",
        )
    problems = return_limit_problems(out)
    for problem in problems:
        log.error("output folder over the device limits: %s", problem)
    log.info(
        "done in %.0f s; %s",
        time.perf_counter() - started,
        ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(out.iterdir())),
    )
    return 1 if problems or result.errors or not result.results else 0


def _manifest_names(path: Path) -> set[str]:
    with open(path, "rb") as f:
        return {m["name"] for m in tomllib.load(f).get("model", [])}


def _size(text: str) -> tuple[int, int] | None:
    if text in ("", "none", "0"):
        return None
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", type=Path, default=PLAN_PATH, help="plan file [%(default)s]")
    p.add_argument("--arch", action="append", help="only this arch (repeatable)")
    p.add_argument("--jobs", type=int, default=6, help="archs trained concurrently [6]")
    p.add_argument("--threads", type=int, help="torch threads per process (default: plan's)")
    p.add_argument("--steps", type=int, help="override every arch's steps (smoke runs)")
    p.add_argument(
        "--train-only", action="store_true", help="train (or resume) only; no export or eval"
    )
    p.add_argument("--width", default="default", help="default, or tiny (smoke runs, tests)")
    p.add_argument(
        "--sandbox",
        type=Path,
        help="write everything under DIR (a copy of the manifest, runs, weights, cards)",
    )
    p.add_argument("--runs", type=Path, help="run folders [runs/pretrained]")
    p.add_argument("--manifest", type=Path, help="manifest to update [the bundled one]")
    p.add_argument("--pretrained-dir", type=Path, help="weights [pretrained/ beside manifest]")
    p.add_argument("--docs", type=Path, help="model cards [docs/models]")
    p.add_argument("--train-photos", type=Path, help="default: the photo pool's train split")
    p.add_argument("--val-photos", type=Path, help="default: the photo pool's val split")
    p.add_argument("--check-photos", type=Path, help="independent photos for a second eval")
    p.add_argument("--benchmark-dir", type=Path, help="cache of built benchmarks")
    p.add_argument(
        "--speed-size",
        type=_size,
        default=(1920, 1080),
        help="WxH at which the default model's MP/s is measured, or none [1920x1080]",
    )
    p.add_argument("--speed-threads", type=int, help="threads for it [all cores]")
    gpu = p.add_argument_group("cohort run (GPU): all archs in one process, time-boxed")
    gpu.add_argument(
        "--minutes",
        type=float,
        help="train every arch together for this wall time in all (start-up and packing "
        "included) and pack the results into --out; nothing is evaluated or registered",
    )
    gpu.add_argument("--out", type=Path, help="where a cohort run packs its results")
    gpu.add_argument("--device", default="auto", help="cuda, cpu or auto [auto]")
    gpu.add_argument("--workers", type=int, help="data loader processes [plan's [cohort]]")
    gpu.add_argument("--patch-size", type=int, help="[plan's [cohort]]")
    gpu.add_argument("--batch-size", type=int, help="[plan's [cohort]]")
    gpu.add_argument("--checkpoint-minutes", type=float, help="validate and pack every [1.5]")
    gpu.add_argument("--max-rounds", type=int, help="stop after this many steps (smoke runs)")
    p.add_argument(
        "--from-bundle",
        type=Path,
        help="evaluate the models a cohort run packed in DIR and ship each one that beats "
        "the shipped model on the benchmark and the check photos",
    )
    gpu.add_argument(
        "--photos",
        type=Path,
        help="a folder with train/ and val/ photos (e.g. from 'deblur data pack')",
    )
    return p.parse_args(argv)


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Where runs, weights, manifest and cards go (``--sandbox`` puts them all in one folder)."""
    from deblurcli.weights.manifest import MANIFEST_PATH

    base = args.sandbox
    manifest = args.manifest or (base / MANIFEST_PATH.name if base else MANIFEST_PATH)
    if base is not None and not manifest.exists():
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(MANIFEST_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    return {
        "runs": args.runs or (base / "runs" if base else REPO / "runs" / "pretrained"),
        "manifest": manifest,
        # Shipped files live in pretrained/ beside the manifest (how the manifest finds them).
        "pretrained": args.pretrained_dir or manifest.parent / "pretrained",
        "docs": args.docs or (base / "docs" if base else REPO / "docs" / "models"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plans = load_plan(args.plan)
    if args.arch:
        unknown = set(args.arch) - set(plans)
        if unknown:
            raise SystemExit(f"not in the plan: {', '.join(sorted(unknown))}")
        plans = {a: p for a, p in plans.items() if a in args.arch}
    for plan in plans.values():
        if args.steps is not None:
            plan["steps"] = args.steps
        if args.threads is not None:
            plan["threads"] = args.threads
    if args.photos is not None:
        args.train_photos = args.train_photos or args.photos / "train"
        args.val_photos = args.val_photos or args.photos / "val"
    if args.train_photos is None or args.val_photos is None:
        from deblurcli.data.photo_pool import split_dir

        args.train_photos = args.train_photos or split_dir("train")
        args.val_photos = args.val_photos or split_dir("val")
    paths = Paths(
        **output_paths(args),
        train_photos=args.train_photos.resolve(),
        val_photos=args.val_photos.resolve(),
        check_photos=args.check_photos.resolve() if args.check_photos else None,
        benchmark_cache=args.benchmark_dir,
    )
    args.bundle = None
    if args.from_bundle is not None:
        args.bundle = bundle_results(args.from_bundle, paths.runs)
        plans = {a: p for a, p in plans.items() if a in args.bundle}
    if args.minutes is not None:
        if args.out is None:
            raise SystemExit("--minutes needs --out DIR for the packed results")
        return cohort_run(plans, paths, args)
    return run_all(plans, paths, args)


if __name__ == "__main__":
    sys.exit(main())
