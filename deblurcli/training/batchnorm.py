"""Precise batch-norm statistics: recomputed over many batches before a model is judged.

During training a BatchNorm layer keeps an exponential moving average (momentum 0.1) of
its batch statistics, so at batch 8 its eval-mode statistics follow the last dozen or so
batches: a few strongly blurred, noisy patches at the end move them, and with them the
validation score of that checkpoint and the exported weights. Recomputing the averages
over a fixed set of training patches (Wu & Johnson 2021, "Rethinking 'Batch' in
BatchNorm", section 3: "PreciseBN") removes that noise; fixing them while fine-tuning
(``freeze_bn``) removes the train/test mismatch as well. Measured on resnetencdec
(docs/ablations.md, "BatchNorm statistics: resnetencdec").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module, frozen: Iterable[nn.Module] = ()) -> list[_BatchNorm]:
    """The model's BatchNorm layers that track statistics, less those inside ``frozen``."""
    kept_as_is = {id(m) for top in frozen for m in top.modules()}
    return [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and id(m) not in kept_as_is
    ]


@torch.no_grad()
def recompute_batchnorm_stats(layers: list[_BatchNorm], run: nn.Module, batches: Iterable) -> int:
    """Replace the running mean and variance of ``layers`` by their average over ``batches``.

    ``run`` is the model the layers belong to; it runs every batch in eval mode but for the
    layers (so dropout stays off), and is put back in the mode it was in. Each batch counts
    once, whatever its size (PyTorch's cumulative average, ``momentum=None``). Returns the
    number of batches seen; with none, the layers keep their statistics.
    """
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone()) for m in layers]
    was_training = run.training
    run.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    seen = 0
    try:
        for batch in batches:
            run(batch)
            seen += 1
    finally:
        for layer, momentum, mean, var in saved:
            layer.momentum = momentum
            if not seen:
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
        run.train(was_training)
    return seen
