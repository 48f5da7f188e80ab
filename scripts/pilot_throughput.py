"""Measure training throughput (patches/s) of each arch at its planned config.

Steady-state optimisation steps of ``deblur train``'s own trainer, with the plan's patch
size, batch size, precision and on-the-fly degradation, on ``--threads`` threads; prints
patches/s and how many steps fit in the plan's budget when six processes share the CPU.
Usage: ``DEBLURCLI_DATA=... python scripts/pilot_throughput.py [--arch A] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_pretrained import PLAN_PATH, load_plan  # noqa: E402


def measure(arch: str, plan: dict, data: Path, steps: int) -> float:
    """Median patches/s over ``steps`` timed steps (one warm-up step first)."""
    from deblurcli.training.trainer import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            arch=arch,
            out=Path(tmp) / arch,
            data=data,
            degrade=plan["degrade"],
            patch_size=plan["patch_size"],
            batch_size=plan["batch_size"],
            steps=steps + 1,
            adversarial=plan.get("adversarial", True),
            n_critic=plan.get("n_critic"),
            loss=plan.get("loss"),
            arch_config=plan["config"],
            precision=plan["precision"],
            workers=0,
            val_fraction=0.0,
        )
        trainer = Trainer(cfg)
        batches = trainer._loader()
        trainer.train_step(next(batches))
        rates = []
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step(next(batches))
            rates.append(plan["batch_size"] / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=PLAN_PATH)
    parser.add_argument("--arch", action="append", help="only these archs (repeatable)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arch")
    parser.add_argument("--threads", type=int, default=None, help="default: the plan's")
    parser.add_argument("--concurrent", type=int, default=6, help="processes sharing the CPU")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    from deblurcli.data.photo_pool import split_dir

    plans = load_plan(args.plan)
    data = split_dir("train")
    share = min(1.0, args.cores / args.concurrent)
    for arch, plan in plans.items():
        if args.arch and arch not in args.arch:
            continue
        threads = args.threads or plan["threads"]
        torch.set_num_threads(threads)
        rate = measure(arch, plan, data, args.steps)
        budget_s = plan["budget_minutes"] * 60
        fit = int(rate * share * budget_s / plan["batch_size"])
        print(
            f"{arch:13s} {rate:7.2f} patches/s ({threads} thread(s), batch {plan['batch_size']}, "
            f"{plan['patch_size']} px)  ~{fit} steps in {plan['budget_minutes']} min at "
            f"{share:.2f} core  config {plan['config']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
