"""Device, precision and memory-format choices for training.

CPU decisions were measured with ``benchmarks/bench_train.py`` and a per-arch training step
(small widths, 8×64², Adam) on a 2-core AVX-512-BF16 EPYC, torch 2.14 (speed-up over fp32
contiguous):

=============  =======  =============  ====================
arch           bf16     channels_last  bf16 + channels_last
=============  =======  =============  ====================
skipae         1.53×    1.45×          2.07×
edgenet        1.73×    1.54×          2.71×
deblurgan      1.38×    0.67×          1.47×
resnetencdec   1.69×    1.00×          1.77×
transformnet   0.10×    0.47×          1.52×
simplecnn      1.62×    1.07×          2.08×
=============  =======  =============  ====================

So on a CPU with native bf16 every arch trains with bf16 autocast *and* channels_last (the
combination wins everywhere; transformnet's bf16 is 10× slower without channels_last).
Weights, optimiser state and losses stay fp32, so accuracy is that of bf16 activations:
after 30 steps on the same tiny dataset, validation PSNR with bf16 differed from fp32 by
at most 0.05 dB for every arch (deblurgan −0.02, edgenet 0.00, resnetencdec −0.03,
simplecnn 0.00, skipae 0.00, transformnet +0.05), so bf16 is used for all six.
In fp32, channels_last only pays for skipae and edgenet.

Each arch's spec records its verdicts (``ArchSpec.cpu_train_bf16`` and
``ArchSpec.cpu_train_channels_last``); :func:`resolve` decides from those alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deblurcli.archs import get_spec
from deblurcli.errors import UsageError
from deblurcli.inference.device import PRECISIONS, cpu_bf16_native


@dataclass(frozen=True)
class Precision:
    """Resolved settings: autocast dtype (None = fp32), GradScaler, channels_last."""

    name: str
    dtype: torch.dtype | None
    scaler: bool
    channels_last: bool


def resolve(arch: str, device: torch.device, value: str = "auto") -> Precision:
    """The precision to train ``arch`` with on ``device`` (``value`` from --precision)."""
    if value not in PRECISIONS:
        raise UsageError(f"unknown precision {value!r}; choose from {', '.join(PRECISIONS)}")
    spec = get_spec(arch)
    if device.type == "cuda":
        if value == "auto":
            if spec.bf16_safe and torch.cuda.is_bf16_supported():
                value = "bf16"
            else:
                value = "fp16" if spec.fp16_safe else "fp32"
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[value]
        return Precision(value, dtype, value == "fp16", channels_last=value != "fp32")
    if device.type != "cpu":  # MPS: fp32, no measurements to go on
        return Precision("fp32", None, False, channels_last=False)
    if value == "fp16":
        raise UsageError("fp16 needs CUDA; on the CPU use bf16 or fp32", option="precision")
    if value == "auto":
        fast = spec.cpu_train_bf16 and spec.bf16_safe and cpu_bf16_native()
        value = "bf16" if fast else "fp32"
    if value == "bf16":
        return Precision("bf16", torch.bfloat16, False, channels_last=True)
    return Precision("fp32", None, False, channels_last=spec.cpu_train_channels_last)
