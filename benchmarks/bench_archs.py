"""Forward throughput of each architecture on the CPU: fp32 contiguous vs channels_last.

Run: python benchmarks/bench_archs.py [--size 256] [--repeats 5] [--quick]
Prints megapixels/s per arch (median of repeats) and the channels_last/contiguous ratio,
both measured side by side in one run.
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_seconds

from deblurcli.archs import create, list_archs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="128² input, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 128, 3
    x = torch.rand(1, 3, args.size, args.size)
    cl_x = x.contiguous(memory_format=torch.channels_last)
    mp = args.size * args.size / 1e6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}² input")
    print(f"{'arch':<14}{'fp32 MP/s':>12}{'ch_last MP/s':>14}{'ratio':>8}")
    for name in list_archs():
        model = create(name)
        model.eval()
        with torch.inference_mode():
            base = median_seconds(lambda m=model: m(x), args.repeats)
            cl_model = model.to(memory_format=torch.channels_last)
            cl = median_seconds(lambda m=cl_model: m(cl_x), args.repeats)
        print(f"{name:<14}{mp / base:>12.3f}{mp / cl:>14.3f}{base / cl:>8.2f}")


if __name__ == "__main__":
    main()
