"""Device choice and the half-precision policy.

* ``auto`` device: CUDA when available, else Apple MPS, else the CPU. Under ``torchrun`` each
  process takes ``cuda:$LOCAL_RANK``.
* ``auto`` precision: fp16 (else bf16) on CUDA only where the architecture's spec says it is
  safe; fp32 everywhere else. Half on the CPU only when asked for explicitly, and if the CPU
  kernels lack it (the Real-ESRGAN "slow_conv2d_cpu not implemented for 'Half'" error) the
  engine falls back to fp32. Non-finite output in half precision (the black-image NaN bug) is
  detected by the engine and the tile is redone in fp32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from deblurcli.errors import UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


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


def resolve_precision(value: str, device: torch.device, model: nn.Module) -> torch.dtype | None:
    """The autocast dtype to run ``model`` with on ``device`` (None = fp32)."""
    value = (value or "auto").lower()
    if value not in PRECISIONS:
        raise UsageError(f"unknown precision {value!r}; use {', '.join(PRECISIONS)}")
    if value == "fp32":
        return None
    flags = _spec_flags(model)
    if value == "auto":
        if device.type != "cuda" or flags is None:
            return None  # never half on CPU/MPS unless asked
        if flags[0]:
            return torch.float16
        return torch.bfloat16 if flags[1] and torch.cuda.is_bf16_supported() else None
    if flags is not None and not flags[0 if value == "fp16" else 1]:
        name = getattr(model, "arch_name", "this model")
        raise UsageError(f"{value} is not safe for {name} (its spec says so); use fp32 or auto")
    return _DTYPES[value]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``; a no-op for fp32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
