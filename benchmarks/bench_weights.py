"""Cost of the sha256 check on pretrained weights: load time with vs without verification.

Run: python benchmarks/bench_weights.py [--arch deblurgan] [--repeats 11] [--quick]
Writes a default-width checkpoint (fp16, as shipped) into a temporary manifest's
``pretrained/`` folder, then times, interleaved in one run: ``load_model(name)`` with the
sha256 check, the same with ``verify=False``, and ``sha256_file`` alone (MB/s). Prints
medians and the verified/unverified ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from deblurcli.archs import create
from deblurcli.weights import load_model, save_checkpoint, sha256_file
from deblurcli.weights.manifest import load_manifest


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each fn, run round-robin so machine noise hits them all alike."""
    for fn in fns.values():
        fn()  # warm-up (page cache, lazy imports)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _manifest(folder: Path, arch: str) -> Path:
    path = save_checkpoint(create(arch), folder / "pretrained" / f"{arch}.safetensors", half=True)
    data = path.read_bytes()
    manifest = folder / "weights_manifest.toml"
    manifest.write_text(
        "schema_version = 1\n[[model]]\n"
        f'name = "{arch}"\narch = "{arch}"\nfile = "{path.name}"\n'
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {len(data)}\nlicense = "MIT"\n'
    )
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="deblurgan")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        manifest = load_manifest(_manifest(Path(tmp), args.arch))
        weights = manifest.entries[0].package_path
        mb = weights.stat().st_size / 1e6
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{args.arch}: default config, fp16 file {mb:.1f} MB, median of {repeats}")
        t = _interleaved_medians(
            {
                "checked": lambda: load_model(args.arch, manifest=manifest),
                "unchecked": lambda: load_model(args.arch, manifest=manifest, verify=False),
                "hash": lambda: sha256_file(weights),
            },
            repeats,
        )
    checked, unchecked, hashing = t["checked"], t["unchecked"], t["hash"]
    print(f"{'load with sha256':<24}{checked * 1e3:>10.1f} ms")
    print(f"{'load without sha256':<24}{unchecked * 1e3:>10.1f} ms")
    print(f"{'ratio with/without':<24}{checked / unchecked:>10.2f} x")
    print(f"{'sha256 alone':<24}{hashing * 1e3:>10.1f} ms  ({mb / hashing:.0f} MB/s)")
    print(f"{'sha256 / unchecked load':<24}{hashing / unchecked:>10.2f}")


if __name__ == "__main__":
    main()
