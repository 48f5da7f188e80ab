"""Training throughput of the pretrained plan's configs vs the paper (registry default) ones.

For each arch of ``scripts/pretrained_plan.toml``: steady-state optimisation steps of
``deblur train``'s own trainer (the plan's patch size, batch size, precision, recipe
overrides and on-the-fly ``--degrade``; workers 0) on one thread, for the plan's narrower
shipped config and for the registry default, side by side; prints median patches/s, the
ratio, and how many steps of the plan config fit the plan's budget when six processes share
the CPU. The numbers behind the ``steps`` in the plan. Photos: the photo pool's train split
when prepared, else generated ones. ``--quick``: plan configs only, batch 2, 2 steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deblurcli.archs import loading_config
from deblurcli.pretraining.plan import load_plan

PLAN_PATH = Path(__file__).resolve().parent.parent / "scripts" / "pretrained_plan.toml"


def photos(tmp: Path) -> Path:
    """The pool's train split, or four generated 320×240 photos when it is not prepared."""
    from deblurcli.errors import DeblurError

    try:
        from deblurcli.data.photo_pool import split_dir

        return split_dir("train")
    except DeblurError:
        from deblurcli.imageio import ImageData, write_image

        rng = np.random.default_rng(0)
        for i in range(4):
            pixels = rng.random((240, 320, 3), dtype=np.float32)
            write_image(tmp / f"photo{i}.png", ImageData(pixels, bit_depth=8))
        return tmp


def measure(arch: str, plan: dict, config: dict, data: Path, steps: int, batch: int) -> float:
    """Median patches/s over ``steps`` timed steps (one warm-up step first)."""
    from deblurcli.training.trainer import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            arch=arch,
            out=Path(tmp) / arch,
            data=data,
            degrade=plan["degrade"],
            patch_size=plan["patch_size"],
            batch_size=batch,
            steps=steps + 1,
            adversarial=plan.get("adversarial", True),
            n_critic=plan.get("n_critic"),
            loss=plan.get("loss"),
            arch_config=config,
            precision=plan["precision"],
            workers=0,
            val_fraction=0.0,
        )
        trainer = Trainer(cfg)
        batches = trainer._loader()
        trainer.train_step(next(batches))
        rates = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step(next(batches))
            rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=PLAN_PATH)
    parser.add_argument("--arch", action="append", help="only these archs (repeatable)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per config [3]")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrent", type=int, default=6, help="processes sharing the CPU")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="plan configs, batch 2, 2 steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    share = min(1.0, args.cores / args.concurrent)
    print(f"{args.threads} thread(s); steps in budget at {share:.2f} core per process, -15 %")
    print(f"{'arch':13s} {'plan p/s':>9s} {'paper p/s':>10s} {'ratio':>6s} {'steps':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        data = photos(Path(tmp))
        for arch, plan in load_plan(args.plan).items():
            if args.arch and arch not in args.arch:
                continue
            batch = 2 if args.quick else plan["batch_size"]
            steps = 2 if args.quick else args.steps
            fast = measure(arch, plan, plan["config"], data, steps, batch)
            fit = int(0.85 * fast * share * plan["budget_minutes"] * 60 / plan["batch_size"])
            if args.quick:
                print(f"{arch:13s} {fast:9.2f} {'-':>10s} {'-':>6s} {fit:6d}", flush=True)
                continue
            slow = measure(arch, plan, loading_config(arch, {}), data, steps, batch)
            print(f"{arch:13s} {fast:9.2f} {slow:10.2f} {fast / slow:5.1f}× {fit:6d}", flush=True)


if __name__ == "__main__":
    main()
