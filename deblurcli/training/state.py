"""A run's resumable state, ``RUN/checkpoints/last.pt``: save, load, restore, merge settings.

The file is a plain dict of tensors, numbers and strings (loaded with ``weights_only=True``):
``step``, the ``state_dict`` of each of ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``critic`` and ``critic_optimizer`` (None without a critic), ``rng`` (one entry per rank:
torch, CUDA and Python generator states), ``best_psnr``, ``config`` (the run's
:class:`TrainConfig` as JSON) and ``init`` (the warm-start lineage as JSON, or None). It is
written atomically and last, after the exports: its presence marks a complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from deblurcli.errors import CheckpointError, UsageError
from deblurcli.imageio import atomic_write_bytes
from deblurcli.training.config import DEFAULT_EVERY, TrainConfig

STATE_FILE = "checkpoints/last.pt"
# The keys of the objects whose state_dict a checkpoint holds, in the file's order.
STATEFUL_KEYS = ("model", "optimizer", "scheduler", "scaler", "critic", "critic_optimizer")
_WITH_CRITIC = ("critic", "critic_optimizer")  # None in runs without a critic
# Settings a resumed run may change: they do not alter what is trained.
_FREE_ON_RESUME = frozenset(
    {"steps", "stop_after", "workers", "progress", "resume", "out", "device", "vgg_weights"}
    | {"cache"}
)
_DATA_KEYS = ("data", "sharp", "blurred", "val")


def state_path(run_dir: Path) -> Path:
    return Path(run_dir) / STATE_FILE


def load_state(run_dir: Path) -> dict[str, Any]:
    """The saved state of the run in ``run_dir``, on the CPU."""
    path = state_path(run_dir)
    if not path.is_file():
        raise UsageError(f"{path} does not exist (nothing to resume)", option="resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises many types
        raise CheckpointError(f"{path}: unreadable training state ({type(exc).__name__})") from None


def merge_saved(config: TrainConfig, saved: dict[str, Any], run_dir: Path) -> TrainConfig:
    """``config`` with the saved run's settings, except the ones that may change on resume."""
    if config.arch is not None and saved.get("arch", config.arch) != config.arch:
        raise UsageError(
            f"{run_dir} holds a {saved['arch']} run; resume it with {{arch}} "
            f"{saved['arch']} (or choose another {{out}} for {config.arch})",
            mentions=("arch", "out"),
        )
    free = set(_FREE_ON_RESUME)
    # Cadence: the saved run's unless given again on this command line.
    free |= {k for k in DEFAULT_EVERY if getattr(config, k) is not None}
    if config.data is not None or config.sharp is not None:
        free |= set(_DATA_KEYS)  # data re-given on the command line (e.g. moved)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in fields and k not in free}
    for key in _DATA_KEYS:
        if isinstance(merged.get(key), str):
            merged[key] = Path(merged[key])
    if "freeze" in merged:
        merged["freeze"] = tuple(merged["freeze"])
    return dataclasses.replace(config, **merged)


def saved_config(state: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(state["config"])


def saved_lineage(state: Mapping[str, Any]) -> dict[str, Any] | None:
    saved = state.get("init")
    return json.loads(saved) if saved else None


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's random generator states (torch, CUDA on a CUDA device, Python)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
    }


def restore_rng(rngs: list[dict[str, Any]], rank: int, device: torch.device) -> None:
    """Set the generators to the saved states of ``rank`` (the last saved rank's if fewer)."""
    rng = rngs[min(rank, len(rngs) - 1)]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    random.setstate(_to_tuple(rng["python"]))


def snapshot(
    stateful: Mapping[str, Any],
    *,
    step: int,
    rngs: list[dict[str, Any]],
    best_psnr: float | None,
    config: TrainConfig,
    lineage: dict[str, Any] | None,
) -> dict[str, Any]:
    """The state dict to save; ``stateful`` maps :data:`STATEFUL_KEYS` to objects (or None)."""
    state: dict[str, Any] = {"step": step}
    for key in STATEFUL_KEYS:
        obj = stateful.get(key)
        state[key] = obj.state_dict() if obj is not None else None
    state["rng"] = rngs
    state["best_psnr"] = best_psnr
    state["config"] = json.dumps(config.to_json())
    state["init"] = json.dumps(lineage) if lineage is not None else None
    return state


def load_into(stateful: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Load each object of ``stateful`` from ``state`` (a critic only when one was saved)."""
    for key in STATEFUL_KEYS:
        obj = stateful.get(key)
        if obj is None or (key in _WITH_CRITIC and state.get("critic") is None):
            continue
        obj.load_state_dict(state[key])


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (never a half-written file, even on a full disk)."""
    buffer = io.BytesIO()  # torch.save onto a full disk raises an opaque RuntimeError
    torch.save(state, buffer)
    atomic_write_bytes(state_path(run_dir), buffer.getvalue())


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list | tuple) else value
