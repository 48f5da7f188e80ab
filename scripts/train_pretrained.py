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
``--minutes`` trains every arch at once instead, time-boxed (the GPU run), and packs the
results into ``--out``; ``--from-bundle`` evaluates and ships what such a run packed, and
``--from-run ARCH=RUN`` does the same for a finished ``deblur train`` run folder (e.g. an
ablation's, with the runs it was initialised from as its earlier stages).
The work is done by :mod:`deblurcli.pretraining`; run this with that checkout importable
(``pip install -e .`` or ``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()  # the time box counts start-up (torch is imported below)

from deblurcli.data.photo_pool import split_dir  # noqa: E402
from deblurcli.pretraining.cohort_run import CohortOptions, cohort_run  # noqa: E402
from deblurcli.pretraining.from_run import run_results  # noqa: E402
from deblurcli.pretraining.pipeline import Options, Paths, bundle_results, run_all  # noqa: E402
from deblurcli.pretraining.plan import load_cohort, load_plan  # noqa: E402
from deblurcli.weights.manifest import MANIFEST_PATH  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PLAN_PATH = Path(__file__).resolve().parent / "pretrained_plan.toml"
_COHORT_OVERRIDES = ("patch_size", "batch_size", "workers", "checkpoint_minutes")
# Where things are read and written: (option, help), all paths.
_PLACES = (
    ("--runs", "run folders [runs/pretrained]"),
    ("--manifest", "manifest to update [the bundled one]"),
    ("--pretrained-dir", "weights [pretrained/ beside manifest]"),
    ("--docs", "model cards [docs/models]"),
    ("--train-photos", "default: the photo pool's train split"),
    ("--val-photos", "default: the photo pool's val split"),
    ("--check-photos", "independent photos for a second eval"),
    ("--benchmark-dir", "cache of built benchmarks"),
)
# The cohort run's numbers: (option, type, help).
_COHORT_NUMBERS = (
    ("--workers", int, "data loader processes [plan's [cohort]]"),
    ("--patch-size", int, "[plan's [cohort]]"),
    ("--batch-size", int, "[plan's [cohort]]"),
    ("--checkpoint-minutes", float, "validate and pack every [1.5]"),
    ("--max-rounds", int, "stop after this many steps (smoke runs)"),
)


def _size(text: str) -> tuple[int, int] | None:
    if text in ("", "none", "0"):
        return None
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def _arch_run(text: str) -> tuple[str, Path]:
    arch, sep, run = text.partition("=")
    if not sep or not arch or not run:
        raise argparse.ArgumentTypeError(f"expected ARCH=RUN_FOLDER, got {text!r}")
    return arch, Path(run)


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
    for flag, text in _PLACES:
        p.add_argument(flag, type=Path, help=text)
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
    for flag, kind, text in _COHORT_NUMBERS:
        gpu.add_argument(flag, type=kind, help=text)
    p.add_argument(
        "--from-run",
        action="append",
        type=_arch_run,
        metavar="ARCH=RUN",
        help="evaluate the model of a finished 'deblur train' run folder (and the runs it was "
        "initialised from) and ship it as --from-bundle does (repeatable)",
    )
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


def photo_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The train and val photos: given, inside ``--photos``, or the photo pool's splits."""
    train, val = args.train_photos, args.val_photos
    if args.photos is not None:
        train, val = train or args.photos / "train", val or args.photos / "val"
    return (train or split_dir("train")).resolve(), (val or split_dir("val")).resolve()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    train, val = photo_paths(args)
    paths = Paths(
        **output_paths(args),
        train_photos=train,
        val_photos=val,
        check_photos=args.check_photos.resolve() if args.check_photos else None,
        benchmark_cache=args.benchmark_dir,
    )
    bundle = None
    if args.from_bundle is not None and args.from_run:
        raise SystemExit("--from-bundle and --from-run: one source of models at a time")
    if args.from_run:
        given = dict(args.from_run)
        unknown = set(given) - set(plans)
        if unknown:
            raise SystemExit(f"not in the plan: {', '.join(sorted(unknown))}")
        try:
            bundle = run_results(given, paths.runs)
        except RuntimeError as exc:  # a run folder that is not one, or a broken lineage
            raise SystemExit(f"--from-run: {exc}") from None
    elif args.from_bundle is not None:
        bundle = bundle_results(args.from_bundle, paths.runs)
    if bundle is not None:
        plans = {a: p for a, p in plans.items() if a in bundle}
    if args.minutes is not None:
        if args.out is None:
            raise SystemExit("--minutes needs --out DIR for the packed results")
        cohort = load_cohort(args.plan)
        given = {k: getattr(args, k) for k in _COHORT_OVERRIDES}
        cohort.update({k: v for k, v in given.items() if v is not None})
        options = CohortOptions(
            out=args.out,
            minutes=args.minutes,
            started=STARTED,
            command=shlex.join(["python", "scripts/train_pretrained.py", *argv]),
            device=args.device,
            width=args.width,
            max_rounds=args.max_rounds,
            cohort=cohort,
        )
        return cohort_run(plans, paths, options)
    options = Options(
        width=args.width,
        jobs=args.jobs,
        train_only=args.train_only,
        speed_size=args.speed_size,
        speed_threads=args.speed_threads,
        bundle=bundle,
    )
    return run_all(plans, paths, options)


if __name__ == "__main__":
    sys.exit(main())
