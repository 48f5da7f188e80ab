"""Fixed-step training ablations, scored on the built-in benchmark (issue 13, Part A2).

Each variant of the plan (``scripts/ablation_plan.toml``) is one ``deblur train`` command on
the photo pool's train split at a fixed step budget (steps, not minutes: on a shared, noisy
machine the same steps are the fair budget; wall time and patches/s are recorded next to the
scores). Its best checkpoint is then scored with ``deblur eval --benchmark`` (the held-out
photos' centred 256×256 crops in the gaussian, motion and noisy families; "mixed" is their
overall gain) next to the tuned unsharp mask, and once more on the opt-in camera family
(``--benchmark-family camera``, in an eval of its own). The table goes into
``docs/ablations.md`` between its table markers.

A variant whose run finished is not trained again (its ``result.json`` is kept), so the same
command after a kill, or with more variants in the plan, only runs what is missing;
``--rescore`` scores finished runs again (e.g. after the benchmark gained a family).

    python scripts/ablate.py --jobs 2                 # every variant of the plan
    python scripts/ablate.py --only lr2e-3 --jobs 1   # one variant
    python scripts/ablate.py --only g4k-bf16 --only gm300-gmix  # the second starts from the first
    python scripts/ablate.py --table-only             # rewrite the table from finished runs
    python scripts/ablate.py --rescore --jobs 2       # score every finished run again
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deblurcli._toml import tomllib
from deblurcli.evaluation.benchmark import FAMILIES
from deblurcli.evaluation.report import SUMMARY_NAME
from deblurcli.pretraining.commands import (
    config_args,
    deblur_cmd,
    failure,
    read_result,
    run_logged,
    shown,
)
from deblurcli.pretraining.from_run import LEARNING_OPTIONS
from deblurcli.training.state import state_path
from deblurcli.training.trainer import RESULT_NAME

REPO = Path(__file__).resolve().parent.parent
PLAN_PATH = Path(__file__).resolve().parent / "ablation_plan.toml"
DOC_PATH = REPO / "docs" / "ablations.md"
TABLE_START, TABLE_END = "<!-- ablation table: start -->", "<!-- ablation table: end -->"
# Each eval tunes the unsharp baseline on its own pairs, so the camera family is scored in an
# eval of its own: the benchmark's unsharp row stays the one the quality bars compare with.
EVALS = {"eval": (), "eval_camera": ("camera",)}  # report folder: --benchmark-family values
# Keys a variant may set; every one but name/note maps to a `deblur train` option.
TRAIN_KEYS = (set(LEARNING_OPTIONS) - {"data", "val"}) | {
    "arch",
    "config",
    "degrade_options",
    "width",
    "init",
    "adversarial",
    "freeze_bn",
}
PLAN_KEYS = TRAIN_KEYS | {"name", "note", "threads", "nice"}


class PlanError(ValueError):
    """The ablation plan is malformed."""


def load_variants(path: Path = PLAN_PATH) -> list[dict[str, Any]]:
    """The plan's variants, each merged over ``[defaults]`` (``config`` merged key by key)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    defaults = data.get("defaults", {})
    variants = []
    for i, table in enumerate(data.get("variant", [])):
        unknown = (set(table) | set(defaults)) - PLAN_KEYS
        if unknown:
            raise PlanError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        if "name" not in table:
            raise PlanError(f"{path}: variant {i + 1} has no name")
        variant = copy.deepcopy(defaults)
        # The defaults' config belongs to the defaults' arch: another arch starts from its own.
        same_arch = table.get("arch", defaults.get("arch")) == defaults.get("arch")
        config = {**(variant.get("config", {}) if same_arch else {}), **table.get("config", {})}
        variant.update(copy.deepcopy(table))
        variant["config"] = config
        variants.append(variant)
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise PlanError(f"{path}: variant names repeat")
    if not variants:
        raise PlanError(f"{path}: no [[variant]] tables")
    return variants


def train_command(variant: dict[str, Any], run: Path, train: Path, val: Path) -> list[str]:
    """The variant's ``deblur train`` command, writing into ``run``."""
    cmd = ["train", "--arch", variant["arch"], "--data", str(train), "--val", str(val)]
    cmd += ["--out", str(run), "--workers", "0"]
    flags = {"adversarial", "freeze_bn"}
    for key in sorted(TRAIN_KEYS - {"arch", "config", "degrade_options"} - flags):
        if variant.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(variant[key])]
    if variant.get("adversarial") is False:
        cmd.append("--no-adversarial")
    if variant.get("freeze_bn"):
        cmd.append("--freeze-bn")
    every = str(variant.get("val_every") or variant["steps"])
    cmd += ["--ckpt-every", every]
    cmd += config_args(variant.get("degrade_options", {}), "--degrade-option")
    return deblur_cmd(*cmd, *config_args(variant["config"]), "--json")


def resumed(cmd: list[str], run: Path) -> list[str]:
    """``cmd`` continuing the interrupted training in ``run``, if there is one, exactly."""
    if not state_path(run).is_file():
        return cmd
    if "--init" in cmd:  # the run's checkpoint holds the model now
        i = cmd.index("--init")
        cmd = cmd[:i] + cmd[i + 2 :]
    return [*cmd, "--resume"]


def eval_command(
    model: Path, photos: Path, cache: Path | None, report: Path, families: tuple[str, ...] = ()
) -> list[str]:
    """``deblur eval --benchmark`` of ``model`` and the tuned unsharp mask on ``photos``
    (``families``: ``--benchmark-family`` values; none: the default benchmark)."""
    cmd = ["eval", "--benchmark", "--benchmark-photos", str(photos)]
    cmd += ["--benchmark-dir", str(cache)] if cache is not None else []
    for family in families:
        cmd += ["--benchmark-family", family]
    return deblur_cmd(*cmd, "--model", str(model), "--model", "unsharp", "--report", str(report))


def _niced(cmd: list[str], nice: int) -> list[str]:
    return ["nice", "-n", str(nice), *cmd] if nice else cmd


def run_variant(
    variant: dict[str, Any],
    root: Path,
    train: Path,
    val: Path,
    cache: Path | None = None,
    rescore: bool = False,
) -> dict[str, Any]:
    """Train (unless done) and score one variant (unless scored and not ``rescore``);
    returns its ``result.json`` content."""
    folder = root / variant["name"]
    variant = with_init_under(variant, root)
    result_path = folder / "result.json"
    if result_path.is_file() and not rescore:
        return json.loads(result_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    log, threads, nice = folder / "log.txt", int(variant.get("threads", 1)), variant.get("nice", 5)
    cmd = resumed(train_command(variant, folder / "run", train, val), folder / "run")
    trained_path = folder / "train.json"  # a finished training is not repeated for the score
    if not trained_path.is_file():
        start = time.perf_counter()
        proc = run_logged(_niced(cmd, nice), log, threads)
        if proc.returncode != 0:
            raise failure(f"{variant['name']}: deblur train", proc, log)
        trained = read_result(folder / "run" / RESULT_NAME, "deblur train")
        trained = {"wall_s": round(time.perf_counter() - start, 1), **trained}
        trained_path.write_text(json.dumps(trained, indent=2) + "\n")
    trained = json.loads(trained_path.read_text())
    wall_s = trained.pop("wall_s")
    model = folder / "run" / "model.safetensors"
    gains: dict[str, dict[str, float]] = {"model": {}, "unsharp": {}}
    for name, families in EVALS.items():
        report = folder / name
        (report / SUMMARY_NAME).unlink(missing_ok=True)  # never read a previous call's
        command = eval_command(model, val, cache, report, families)
        proc = run_logged(_niced(command, nice), log, threads)
        if proc.returncode != 0:
            raise failure(f"{variant['name']}: deblur eval", proc, log)
        for key, values in scores(read_result(report / SUMMARY_NAME, "deblur eval")).items():
            gains[key].update(values)
    result = {
        "variant": variant,
        "command": shown(cmd),
        "wall_s": wall_s,
        "train": trained,
        "scores": gains,
    }
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def with_init_under(variant: dict[str, Any], root: Path) -> dict[str, Any]:
    """``variant`` with a relative ``init`` path (one with a ``/``, e.g. another variant's
    ``NAME/run/last.safetensors``) made absolute under the runs folder ``root``; a model
    name (``edgenet``) or an absolute path stays as it is."""
    init = variant.get("init")
    if not isinstance(init, str) or "/" not in init or Path(init).is_absolute():
        return variant
    return {**variant, "init": str(root / init)}


def waves(variants: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``variants`` in rounds: one initialised from another's run (``init = "NAME/..."``)
    trains in a round after that variant's."""
    by_name = {v["name"]: v for v in variants}

    def level(variant: dict[str, Any], seen: tuple[str, ...] = ()) -> int:
        if variant["name"] in seen:
            raise PlanError(f"init cycle: {' -> '.join((*seen, variant['name']))}")
        init = variant.get("init")
        parent = init.split("/", 1)[0] if isinstance(init, str) and "/" in init else None
        if parent not in by_name or Path(init).is_absolute():
            return 0
        return 1 + level(by_name[parent], (*seen, variant["name"]))

    levels = {v["name"]: level(v) for v in variants}
    rounds = range(max(levels.values(), default=-1) + 1)
    return [[v for v in variants if levels[v["name"]] == i] for i in rounds]


def scores(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """PSNR gains over the blurry input per family, of the model and of unsharp; ``mixed``
    (the benchmark's overall gain) when the eval is the default benchmark."""
    rows = summary["rows"]
    blurry = next(r for r in rows if r["kind"] == "input")
    out = {}
    for key, row in (
        ("model", next(r for r in rows if r["kind"] == "model")),
        ("unsharp", next(r for r in rows if r["key"] == "unsharp")),
    ):
        gains = {
            family: values["psnr"] - blurry["families"][family]["psnr"]
            for family, values in row["families"].items()
        }
        if set(gains) == set(FAMILIES):
            gains["mixed"] = row["psnr_gain"]
        out[key] = {k: round(float(v), 3) for k, v in gains.items()}
    return out


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table of finished variants (plan order), with unsharp's row last."""
    head = "| variant | change | val PSNR | gaussian | motion | noisy | mixed | camera "
    lines = [head + "| patches/s | wall |", "|" + "---|" * 10]
    unsharp = None
    for r in results:
        v, s, t = r["variant"], r["scores"]["model"], r["train"]
        best = "-" if t.get("best_psnr") is None else f"{t['best_psnr']:.2f}"
        lines.append(
            f"| {v['name']} | {v.get('note', '')} | {best} | {_gains(s)} "
            f"| {t['patches_per_s']:.1f} | {r['wall_s'] / 60:.1f} min |"
        )
        if unsharp is None or "camera" in r["scores"]["unsharp"]:  # the most families
            unsharp = r["scores"]["unsharp"]
    if unsharp is not None:
        lines.append(f"| unsharp (tuned) | baseline | - | {_gains(unsharp)} | | |")
    return "\n".join(lines) + "\n"


def _gains(gains: dict[str, float]) -> str:
    """Table cells: each family's gain, mixed, camera ("-" where a run was not scored on it)."""
    keys = (*FAMILIES, "mixed", "camera")
    return " | ".join("-" if k not in gains else f"{gains[k]:+.2f}" for k in keys)


def write_table(text: str, doc: Path) -> None:
    """Put ``text`` between the table markers of ``doc`` (created with them if missing)."""
    block = f"{TABLE_START}\n{text}{TABLE_END}"
    if not doc.is_file():
        doc.write_text(f"# Training ablations\n\n{block}\n")
        return
    current = doc.read_text()
    start, end = current.find(TABLE_START), current.find(TABLE_END)
    if start < 0 or end < start:
        raise PlanError(f"{doc}: no {TABLE_START} ... {TABLE_END} markers")
    doc.write_text(current[:start] + block + current[end + len(TABLE_END) :])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from deblurcli.data.photo_pool import split_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", type=Path, default=PLAN_PATH)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "ablate")
    p.add_argument("--only", action="append", default=[], help="Variant name (repeatable).")
    p.add_argument("--jobs", type=int, default=2, help="Variants trained at a time.")
    p.add_argument("--train-photos", type=Path, default=None, help="[photo pool train split]")
    p.add_argument("--val-photos", type=Path, default=None, help="[photo pool val split]")
    p.add_argument("--benchmark-dir", type=Path, default=None, help="[the eval cache]")
    p.add_argument("--doc", type=Path, default=DOC_PATH, help="Markdown file for the table.")
    p.add_argument("--table-only", action="store_true", help="Train nothing; rewrite the table.")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="Score finished runs again (unfinished ones train as usual).",
    )
    args = p.parse_args(argv)
    args.train_photos = args.train_photos or split_dir("train")
    args.val_photos = args.val_photos or split_dir("val")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        variants = load_variants(args.plan)
    except (OSError, PlanError, tomllib.TOMLDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    unknown = set(args.only) - {v["name"] for v in variants}
    if unknown:
        print(f"error: no variant named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    chosen = [v for v in variants if not args.only or v["name"] in args.only]
    try:
        rounds = waves(chosen)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    if not args.table_only:

        def one(variant: dict[str, Any]) -> None:
            nonlocal failed
            try:
                r = run_variant(
                    variant,
                    args.runs,
                    args.train_photos,
                    args.val_photos,
                    args.benchmark_dir,
                    args.rescore,
                )
                gain = r["scores"]["model"]["mixed"]
                print(f"{variant['name']}: mixed gain {gain:+.2f} dB", flush=True)
            except RuntimeError as exc:
                failed += 1
                print(f"error: {exc}", file=sys.stderr, flush=True)

        for wave in rounds:  # a variant that starts from another's model waits for it
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                list(pool.map(one, wave))
    done = [args.runs / v["name"] / "result.json" for v in variants]
    results = [json.loads(p.read_text()) for p in done if p.is_file()]
    notes = {v["name"]: v.get("note", "") for v in variants}
    for r in results:  # the plan's current wording
        r["variant"]["note"] = notes[r["variant"]["name"]]
    if results:
        write_table(table(results), args.doc)
        print(f"table of {len(results)} variant(s) written to {args.doc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
