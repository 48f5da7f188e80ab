"""Narrow convolutions split in two for bf16 on the CPU (inference only, no weights change).

oneDNN computes output channels in blocks of 16, so a conv with 3 output channels (a model's
RGB tail, e.g. 32→3 with a 7×7 kernel) costs as much as one with 16: in bf16 the tail took
9 % of edgenet's forward for 2.5 % of its arithmetic. Written as a 1×k conv to ``k·oc`` channels
(each kernel row's contribution) and a k×1 conv that adds the rows up at their offsets, the
same products run in full blocks (edgenet's tail at 960×544, one thread: 117 → 47 ms). Exact
in real arithmetic; in bf16 the row sums are rounded once more, which the manifest's
``cpu_bf16_psnr_delta`` measurement covers (the engine uses the split whenever it runs bf16
on the CPU, ``deblur eval --precision bf16`` included).

The split is installed per forward call (an instance ``forward``, removed afterwards), so the
caller's model, its ``state_dict`` and its fp32 results stay as they were.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_BLOCK = 16  # oneDNN's output-channel block for bf16 convolutions on AVX-512 CPUs
_MIN_GAIN = 1.5  # split only where the block-padded arithmetic drops by this factor


def _blocks(channels: int) -> int:
    return -(-channels // _BLOCK) * _BLOCK


def splittable(conv: nn.Module) -> bool:
    """A plain conv whose block-padded cost drops by :data:`_MIN_GAIN` when split in rows."""
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    if conv.dilation != (1, 1) or isinstance(conv.padding, str):
        return False
    out_ch, in_ch, kh, kw = conv.weight.shape
    if kh < 2 or out_ch >= _BLOCK:
        return False
    direct = _blocks(out_ch) * in_ch * kh * kw
    split = _blocks(kh * out_ch) * in_ch * kw + _blocks(out_ch) * kh * out_ch * kh
    return split * _MIN_GAIN <= direct


def _runs_bf16_on_cpu(x: torch.Tensor) -> bool:
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@functools.lru_cache(maxsize=32)
def _row_summer(out_ch: int, kh: int) -> torch.Tensor:
    """Weights of the k×1 conv that adds row ``r``'s ``out_ch`` channels at row offset ``r``."""
    weight = torch.zeros(out_ch, kh * out_ch, kh, 1)
    for row in range(kh):
        for ch in range(out_ch):
            weight[ch, row * out_ch + ch, row, 0] = 1.0
    return weight


def _split_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if not _runs_bf16_on_cpu(x):
        return conv._conv_forward(x, conv.weight, conv.bias)
    out_ch, in_ch, kh, kw = conv.weight.shape
    rows = conv.weight.permute(2, 0, 1, 3).reshape(kh * out_ch, in_ch, 1, kw)
    summer = _row_summer(out_ch, kh)
    dtype = x.dtype if x.dtype == torch.bfloat16 else conv.weight.dtype  # autocast casts
    y = F.conv2d(x, rows.to(dtype), None, (1, conv.stride[1]), conv.padding)
    bias = None if conv.bias is None else conv.bias.to(y.dtype)
    return F.conv2d(y, summer.to(y.dtype), bias, (conv.stride[0], 1))


def narrow_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The convs of ``model`` that :func:`split_narrow_convs` would split."""
    return [m for m in model.modules() if splittable(m) and "forward" not in m.__dict__]


@contextlib.contextmanager
def split_narrow_convs(convs: list[nn.Conv2d]) -> Iterator[None]:
    """Run ``convs`` split in rows while inside (bf16 CPU inputs only; others as before)."""
    for conv in convs:
        conv.forward = functools.partial(_split_forward, conv)
    try:
        yield
    finally:
        for conv in convs:
            conv.__dict__.pop("forward", None)
