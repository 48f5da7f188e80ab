"""Folding eval-mode BatchNorm layers into the convolution in front of them (inference only).

A BatchNorm in eval mode is a per-channel affine map, so ``bn(conv(x))`` equals one conv with
rescaled weights and a bias: one pass over the activations instead of two. A pair is folded
only where the conv's output feeds nothing but the norm: consecutive children of an
``nn.Sequential``, or, for any other module, pairs that ``torch.fx`` proves are wired that way
(torchvision's ResNet blocks); a module that cannot be traced is left as it is.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and not conv.training
        and not bn.training
    )


def _sequential_pairs(seq: nn.Sequential) -> list[tuple[str, str]]:
    names = [name for name, _ in seq.named_children()]
    pairs = zip(names[:-1], names[1:], strict=True)
    return [(a, b) for a, b in pairs if _foldable(seq._modules[a], seq._modules[b])]


def _traced_pairs(module: nn.Module) -> list[tuple[str, str]]:
    children = dict(module.named_children())
    if not any(isinstance(c, nn.BatchNorm2d) for c in children.values()):
        return []
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - any untraceable forward just means "leave it"
        return []
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        src = node.args[0] if node.op == "call_module" and node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module":
            continue
        conv, bn = children.get(str(src.target)), children.get(str(node.target))
        once = calls[src.target] == 1 and calls[node.target] == 1 and len(src.users) == 1
        if conv is not None and bn is not None and once and _foldable(conv, bn):
            pairs.append((str(src.target), str(node.target)))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every foldable Conv2d → BatchNorm2d pair of ``model`` (in eval mode), in place.

    The conv gets the norm's scale and shift, the norm becomes ``nn.Identity``. Returns the
    number of pairs folded. Only for inference: the folded model cannot be trained as before.
    """
    folded = 0
    for module in list(model.modules()):
        pairs = (
            _sequential_pairs(module)
            if isinstance(module, nn.Sequential)
            else _traced_pairs(module)
        )
        for conv_name, bn_name in pairs:
            conv, bn = module._modules[conv_name], module._modules[bn_name]
            module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
            module._modules[bn_name] = nn.Identity()
            folded += 1
    return folded
