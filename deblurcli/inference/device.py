"""Device choice, CPU threads and the half-precision policy.

* ``auto`` device: CUDA when available, else Apple MPS, else the CPU. Under ``torchrun`` each
  process takes ``cuda:$LOCAL_RANK``.
* ``auto`` precision: fp16 (else bf16) on CUDA where the architecture's spec says it is safe.
  On a CPU with native bf16 (AVX512-BF16 or AMX, as torch reports it) bf16 autocast with
  channels_last, 3-6x faster, for a model whose spec says bf16 is safe *and* whose manifest
  entry records ``cpu_bf16 = true`` (its benchmark PSNR moved by at most 0.05 dB against
  fp32); fp32 everywhere else (MPS, older CPUs, checkpoints without such a record).
* fp16 on the CPU is refused: its kernels are emulated and ~200x slower than fp32.
  Non-finite output in half precision (the black-image NaN bug) is detected by the engine and
  the tile is redone in fp32.
* Threads: one per physical core this process may run on (hyperthreads only add contention
  to the convolution kernels), shared out between the processes of a ``torchrun`` job.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from deblurcli.errors import UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CPU_BF16_ATTR = "cpu_bf16"  # set on a model by the weights loader from its manifest entry
_CPU_TOPOLOGY = Path("/sys/devices/system/cpu")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters
_KEEP_BYTES = 1 << 30


def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), per torch.

    oneDNN's own ``_is_mkldnn_bf16_supported`` is not enough: it is also true on plain AVX-512
    CPUs, where bf16 is emulated and no faster than fp32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        native = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
        return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def physical_cores(topology: Path = _CPU_TOPOLOGY) -> int:
    """Physical cores among the CPUs this process may run on (hyperthread siblings count once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return max(os.cpu_count() or 1, 1)
    cores = set()
    for cpu in cpus:
        base = topology / f"cpu{cpu}" / "topology"
        try:
            package = (base / "physical_package_id").read_text().strip()
            core = (base / "core_id").read_text().strip()
        except OSError:
            return len(cpus)  # no sysfs topology (a container, another OS): count CPUs
        cores.add((package, core))
    return len(cores)


def default_threads() -> int:
    """Threads for one process: the physical cores, shared among local ``torchrun`` ranks."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(physical_cores() // max(local_world, 1), 1)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (None = :func:`default_threads`); returns the count set."""
    if threads is not None and threads < 1:
        raise UsageError(f"must be at least 1, not {threads}", option="threads")
    count = threads or default_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks (up to 1 GiB) for reuse; True when it agreed.

    By default every block over 32 MiB (a full-size activation) is mapped fresh and unmapped
    when freed, so each layer's output faults its pages in again and the kernel zeroes them:
    a fifth of an fp32 CPU forward and a tenth of a bf16 one at 960×544. Process-wide, so it
    is called by the CPU restore path, not by the engine; a no-op without glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def _local_cuda() -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def pick_device(value: str = "auto") -> torch.device:
    """Resolve ``auto|cpu|cuda|cuda:N|mps`` to an available :class:`torch.device`."""
    value = (value or "auto").strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            return _local_cuda()
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if value == "cuda" and torch.cuda.is_available():
        return _local_cuda()  # under torchrun each process takes its own GPU
    try:
        device = torch.device(value)
    except RuntimeError:
        raise UsageError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {value!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UsageError(f"device {value!r} does not exist ({count} CUDA device(s))")
    elif device.type == "mps" and not _mps_available():
        raise UsageError("device 'mps' requested but MPS is not available")
    elif device.type not in {"cpu", "cuda", "mps"}:
        raise UsageError(f"unsupported device {value!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def _spec_flags(model: nn.Module) -> tuple[bool, bool] | None:
    spec = getattr(model, "arch_spec", None)
    return None if spec is None else (spec.fp16_safe, spec.bf16_safe)


def _auto_dtype(device: torch.device, model: nn.Module) -> torch.dtype | None:
    flags = _spec_flags(model)
    if flags is None:
        return None
    if device.type == "cuda":
        if flags[0]:
            return torch.float16
        return torch.bfloat16 if flags[1] and torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        checked = getattr(model, CPU_BF16_ATTR, None) is True  # no record: fp32
        return torch.bfloat16 if flags[1] and checked and cpu_bf16_native() else None
    return None  # MPS: no measurements to go on


def resolve_precision(value: str, device: torch.device, model: nn.Module) -> torch.dtype | None:
    """The autocast dtype to run ``model`` with on ``device`` (None = fp32)."""
    value = (value or "auto").lower()
    if value not in PRECISIONS:
        raise UsageError(f"unknown precision {value!r}; use {', '.join(PRECISIONS)}")
    if value == "fp32":
        return None
    if value == "auto":
        return _auto_dtype(device, model)
    if value == "fp16" and device.type == "cpu":
        raise UsageError(
            "fp16 is not supported on the CPU (emulated, ~200x slower than fp32); "
            "use auto, bf16 or fp32",
            option="precision",
        )
    flags = _spec_flags(model)
    if flags is not None and not flags[0 if value == "fp16" else 1]:
        name = getattr(model, "arch_name", "this model")
        raise UsageError(f"{value} is not safe for {name} (its spec says so); use fp32 or auto")
    return _DTYPES[value]


def channels_last(device: torch.device, dtype: torch.dtype | None) -> bool:
    """Whether to run in channels_last: on CUDA, and for bf16 on the CPU (oneDNN's fast path)."""
    return device.type == "cuda" or (device.type == "cpu" and dtype is torch.bfloat16)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``; a no-op for fp32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
