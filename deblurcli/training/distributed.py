"""DistributedDataParallel plumbing for ``torchrun`` (gloo on CPU, NCCL on CUDA).

Multi-node: run the same command on every node with torchrun's rendezvous options, e.g.
``torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500
-m deblurcli train ...``; the run folder must be on storage every node can read (only
rank 0 writes, every rank reads it on ``--resume``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> DistInfo:
    """Join the process group torchrun set up (env WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_finite(loss: torch.Tensor, info: DistInfo) -> bool:
    """True when the loss is finite on every rank (so all ranks stop together)."""
    flag = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if info.enabled:
        flag = flag.to(_comm_device(loss))
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def average_gradients(module: nn.Module, info: DistInfo) -> None:
    """All-reduce the gradients of a module not wrapped in DDP (the GAN critic).

    The critic's WGAN-GP step differentiates twice (create_graph), which DDP's reducer does
    not support, so its gradients are averaged by hand after backward.
    """
    if not info.enabled:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world)


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank, in rank order (a one-item list without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _comm_device(t: torch.Tensor) -> torch.device:
    return t.device if dist.get_backend() == "nccl" else torch.device("cpu")
