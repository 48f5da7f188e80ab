"""Precise BatchNorm statistics (training.batchnorm); the trainer's use: test_training.py."""

from __future__ import annotations

import torch
from torch import nn

from deblurcli.training.batchnorm import batchnorm_layers, recompute_batchnorm_stats


def _batches(n: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 6, 6, generator=gen) * (i + 1) + i for i in range(n)]


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.Dropout(0.5), nn.BatchNorm2d(5), nn.ReLU())


def test_statistics_become_the_average_over_the_batches_with_dropout_off() -> None:
    net = _net().train()
    with torch.no_grad():  # the moving average of some other batches first
        for b in _batches(3):
            net(b * 7 - 2)
    batches = _batches()
    with torch.no_grad():
        feats = [net[0](b) for b in batches]  # what the layer sees without dropout
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)

    layers = batchnorm_layers(net)
    assert layers == [net[2]]
    assert recompute_batchnorm_stats(layers, net, batches) == len(batches)
    torch.testing.assert_close(net[2].running_mean, means)
    torch.testing.assert_close(net[2].running_var, variances)
    # put back as it was: training mode everywhere, the moving average's momentum
    assert all(m.training for m in net.modules()) and net[2].momentum == 0.1


def test_frozen_layers_are_left_out_and_no_batches_change_nothing() -> None:
    net = _net().eval()
    assert batchnorm_layers(net, frozen=[net[2]]) == []
    assert batchnorm_layers(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False))) == []
    net[2].running_mean += 0.5
    before = net[2].running_mean.clone(), net[2].running_var.clone()
    assert recompute_batchnorm_stats([net[2]], net, []) == 0
    assert torch.equal(net[2].running_mean, before[0])
    assert torch.equal(net[2].running_var, before[1])
    assert not net.training and net[2].momentum == 0.1
