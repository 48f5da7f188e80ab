"""Sharding a batch across ``torchrun`` processes.

``torchrun --nproc_per_node=N -m deblurcli restore ...`` starts N copies of the command with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set. Every process plans the same sorted job list and
keeps every N-th job starting at its rank, so each file is done exactly once with no
communication (no process group is needed just to split a list of files). On CUDA each
process uses ``cuda:$LOCAL_RANK`` (see :func:`deblurcli.inference.device.pick_device`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

from deblurcli.errors import UsageError

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torchrun)."""
    try:
        rank = int(os.environ.get("RANK", "0") or 0)
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        raise UsageError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"invalid RANK={rank} / WORLD_SIZE={world}")
    return rank, world


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items process ``rank`` of ``world`` handles (round robin over the given order)."""
    return list(items[rank::world])
