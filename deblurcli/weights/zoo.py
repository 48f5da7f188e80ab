"""Published restoration checkpoints (NAFNet, FFTformer, ...), recognised by spandrel.

A ``.pth``/``.safetensors`` file without deblurcli metadata is handed to spandrel (the
optional ``zoo`` extra), which detects its architecture from the tensor names and builds the
model. The file itself is read here, safetensors directly and ``.pth`` only through
``torch.load(weights_only=True)`` (spandrel's own loader would unpickle more than tensors).
The result is wrapped in :class:`ExternalModel`, whose :class:`ArchSpec` carries spandrel's
descriptor facts (half-precision support, size multiple), so the engine tiles and casts it
like one of the six.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deblurcli.archs import ArchSpec
from deblurcli.errors import CheckpointError
from deblurcli.weights.checkpoint import read_state_dict

INSTALL_HINT = "pip install 'deblurcli[zoo]'"
# spandrel's restoration architectures that were published for deblurring (docs/zoo.md).
DEBLURRING_ARCHS = ("NAFNet", "FFTformer", "Uformer", "KBNet")
# Blend margin for published models: their receptive fields are far wider than the six's.
_EXTERNAL_OVERLAP = 64
_NOT_OURS = "no 'deblurcli.arch' metadata and no config.json beside it"
_ARCH_HINT = (
    "if it is one of the six, name it with {arch} NAME (e.g. 'deblur restore --arch edgenet "
    "-m FILE', and 'deblur eval --arch' likewise)"
)


def spandrel_available() -> bool:
    """True when the optional spandrel package is importable."""
    try:
        import spandrel  # noqa: F401
    except ImportError:
        return False
    return True


def _size_multiple(descriptor: Any) -> int:
    """spandrel's ``multiple_of``, and the multiple a network pads itself to (NAFNet's
    ``padder_size``): tiles of that multiple need no zero padding inside the network."""
    inner = getattr(descriptor.model, "padder_size", 1)
    return math.lcm(int(descriptor.size_requirements.multiple_of), int(inner or 1))


class ExternalModel(nn.Module):
    """A spandrel-built network behind deblurcli's model interface.

    ``arch_name``/``arch_config``/``arch_spec`` are what the engine, ``deblur export`` and the
    summaries read; ``forward`` adds the padding spandrel's size rules need beyond the size
    multiple the engine already pads to (a minimum side, a square input).
    """

    def __init__(self, descriptor: Any):
        super().__init__()
        req = descriptor.size_requirements
        arch = descriptor.architecture
        self.net = descriptor.model
        self.minimum, self.square = int(req.minimum), bool(req.square)
        self.arch_name = f"spandrel:{arch.id}"
        self.arch_config = {
            "spandrel_arch": arch.id,
            "tags": list(descriptor.tags),
            "tiling": descriptor.tiling.name.lower(),
        }
        self.arch_spec = ArchSpec(
            name=self.arch_name,
            title=arch.name,
            source="spandrel",
            default_config={},
            size_multiple=_size_multiple(descriptor),
            fp16_safe=bool(descriptor.supports_half),
            bf16_safe=bool(descriptor.supports_bfloat16),
            tile_overlap=_EXTERNAL_OVERLAP,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        th, tw = max(h, self.minimum), max(w, self.minimum)
        if self.square:
            th = tw = max(th, tw)
        if (th, tw) == (h, w):
            return self.net(x)
        mode = "reflect" if th < 2 * h and tw < 2 * w else "replicate"
        padded = F.pad(x, (0, tw - w, 0, th - h), mode=mode)
        return self.net(padded)[..., :h, :w]


def describe_state(state: dict[str, Any]) -> str:
    """A few words on what a state dict looks like (for 'not recognised' messages)."""
    tensors = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    if {"model", "optimizer", "step"} <= set(state):
        return "a deblurcli training state (pass the run folder or its model.safetensors)"
    if not tensors:
        keys = ", ".join(sorted(map(str, state))[:4])
        return f"a dict without tensors at the top level (keys: {keys})"
    shown = ", ".join(tensors[:3])
    return f"a state dict of {len(tensors)} tensors ({shown}, ...)"


def load_external(path: Path) -> ExternalModel:
    """Build the published restoration model in ``path`` with spandrel (fp32, eval mode)."""
    if not spandrel_available():
        raise CheckpointError(
            f"{path}: {_NOT_OURS}; a published checkpoint such as NAFNet needs the zoo extra "
            f"({INSTALL_HINT}); {_ARCH_HINT}",
            mentions=("arch",),
        )
    from spandrel import (
        MAIN_REGISTRY,
        ImageModelDescriptor,
        UnsupportedModelError,
        canonicalize_state_dict,
    )

    state = canonicalize_state_dict(read_state_dict(path))
    try:
        descriptor = MAIN_REGISTRY.load(state)
    except UnsupportedModelError:
        raise CheckpointError(
            f"{path}: {describe_state(state)}, {_NOT_OURS}, and not an architecture "
            f"spandrel recognises; {_ARCH_HINT}",
            mentions=("arch",),
        ) from None
    except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: looks like a damaged checkpoint ({first})") from None
    arch = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "Restoration":
        raise CheckpointError(
            f"{path}: a {arch} {descriptor.purpose} model (scale {descriptor.scale}), not an "
            "image restoration model; deblurcli runs same-size restoration models only"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise CheckpointError(
            f"{path}: a {arch} model with {descriptor.input_channels} input channel(s); "
            "deblurcli runs RGB models"
        )
    return ExternalModel(descriptor).float().eval()


def external_families() -> list[dict[str, Any]]:
    """spandrel's restoration families that deblurcli can run (empty without the extra)."""
    if not spandrel_available():
        return []
    from spandrel import MAIN_REGISTRY

    ids = {a.architecture.id: a.architecture.name for a in MAIN_REGISTRY.architectures()}
    return [{"name": f"spandrel:{i}", "title": ids[i]} for i in DEBLURRING_ARCHS if i in ids]
