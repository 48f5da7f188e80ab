"""Training precision on the CPU: decided by each arch's spec, not by lists of names."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deblurcli.archs import _registry, get_spec, list_archs
from deblurcli.errors import UsageError
from deblurcli.inference import device as inference_device
from deblurcli.training import precision

CPU = torch.device("cpu")


def _with_spec(monkeypatch, name: str, **changes) -> None:
    entry = _registry._REGISTRY[name]
    spec = dataclasses.replace(entry.spec, **changes)
    monkeypatch.setitem(_registry._REGISTRY, name, dataclasses.replace(entry, spec=spec))


@pytest.mark.parametrize("name", list_archs())
@pytest.mark.parametrize("native", [True, False])
def test_auto_cpu_precision_follows_the_spec(monkeypatch, name, native):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    spec = get_spec(name)
    chosen = precision.resolve(name, CPU, "auto")
    if native and spec.cpu_train_bf16 and spec.bf16_safe:
        assert (chosen.name, chosen.dtype, chosen.channels_last) == ("bf16", torch.bfloat16, True)
    else:
        assert (chosen.name, chosen.dtype) == ("fp32", None)
        assert chosen.channels_last is spec.cpu_train_channels_last
    assert chosen.scaler is False


def test_the_measured_verdicts_moved_into_the_specs():
    # The table in deblurcli/training/precision.py: bf16 wins for all six, fp32 channels_last
    # only for skipae and edgenet.
    assert all(get_spec(name).cpu_train_bf16 for name in list_archs())
    fp32_channels_last = {n for n in list_archs() if get_spec(n).cpu_train_channels_last}
    assert fp32_channels_last == {"skipae", "edgenet"}


def test_changing_the_spec_changes_the_choice(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    assert precision.resolve("skipae", CPU, "auto").name == "bf16"
    _with_spec(monkeypatch, "skipae", cpu_train_bf16=False, cpu_train_channels_last=False)
    chosen = precision.resolve("skipae", CPU, "auto")
    assert (chosen.name, chosen.channels_last) == ("fp32", False)
    _with_spec(monkeypatch, "simplecnn", cpu_train_channels_last=True)
    assert precision.resolve("simplecnn", CPU, "fp32").channels_last is True
    _with_spec(monkeypatch, "simplecnn", bf16_safe=False)  # unsafe beats measured-faster
    assert precision.resolve("simplecnn", CPU, "auto").name == "fp32"


def test_one_precisions_tuple_for_training_and_inference():
    assert precision.PRECISIONS is inference_device.PRECISIONS
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        precision.resolve("simplecnn", CPU, "fp8")
