"""ONNX: export a model to a portable file, and run such a file behind the engine.

:func:`export_onnx` writes an opset ≥ 17 graph with a dynamic batch, height and width (fp32,
or fp16 weights behind fp32 input/output), and records in the file's ``metadata_props``
what the engine needs to run it as it runs the torch model: the arch and its config, the size
multiple, the tile overlap and the activation memory per pixel. :class:`OnnxModel` wraps an
onnxruntime session as a module, so ``restore_tensor`` tiles, blends and batches it exactly
as it does the six (CPU, or CUDA's execution provider for CUDA tensors when installed).

InstanceNorm layers (deblurgan, transformnet) see per-tile statistics here: the whole-image
statistics of the torch engine need hooks inside the network. Whole images are unaffected.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deblurcli.archs import ArchSpec
from deblurcli.errors import CheckpointError, DeblurError
from deblurcli.imageio import atomic_path
from deblurcli.inference.tiling import activation_bytes_per_pixel, default_overlap, size_multiple

INSTALL_HINT = "pip install 'deblurcli[onnx]'"
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "restored"
META_PREFIX = "deblurcli."
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise DeblurError(f"{module} is not installed; {INSTALL_HINT}") from None


class _HalfWeights(nn.Module):
    """fp16 weights and arithmetic behind an fp32 input and output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def export_metadata(model: nn.Module, fp16: bool) -> dict[str, str]:
    """What ``deblur restore`` needs to tile the exported graph like the torch model."""
    multiple = size_multiple(model)
    bpp = activation_bytes_per_pixel(model, torch.device("cpu"), multiple)
    return {
        f"{META_PREFIX}arch": str(getattr(model, "arch_name", type(model).__name__)),
        f"{META_PREFIX}config": json.dumps(getattr(model, "arch_config", {}), sort_keys=True),
        f"{META_PREFIX}size_multiple": str(multiple),
        f"{META_PREFIX}tile_overlap": str(default_overlap(model)),
        f"{META_PREFIX}bytes_per_pixel": f"{bpp:.1f}",
        f"{META_PREFIX}precision": "fp16" if fp16 else "fp32",
    }


def export_onnx(
    model: nn.Module, path: str | Path, *, fp16: bool = False, opset: int = DEFAULT_OPSET
) -> Path:
    """Write ``model`` to ``path`` as ONNX (dynamic N, H, W) and return the path."""
    onnx = _require("onnx")
    if opset < 17:
        raise DeblurError(f"opset {opset} is too old; use 17 or newer")
    path = Path(path)
    model = model.float().eval().cpu()
    meta = export_metadata(model, fp16)
    side = max(64, 2 * size_multiple(model))
    side = -(-side // size_multiple(model)) * size_multiple(model)
    net = _HalfWeights(model) if fp16 else model
    example = torch.rand(1, 3, side, side)
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not the user's concern
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            dynamo=False,  # the TorchScript exporter handles data-dependent padding
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
        )
        graph = onnx.load(str(tmp))
        for key, value in meta.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
    if fp16:
        model.float()  # _HalfWeights converted the caller's module in place
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    onnx = _require("onnx")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    return {p.key: p.value for p in graph.metadata_props}


class OnnxModel(nn.Module):
    """An ONNX file behind the torch model interface the engine drives.

    One onnxruntime session per device type, made on first use: CUDA tensors run on CUDA's
    execution provider when onnxruntime has it, everything else on the CPU (with as many
    threads as torch uses, so the two compare fairly).
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.ort = _require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        self._sessions: dict[str, Any] = {}
        meta = self._session("cpu").get_modelmeta().custom_metadata_map or {}
        arch = meta.get(f"{META_PREFIX}arch", "unknown")
        try:
            self.arch_config = json.loads(meta.get(f"{META_PREFIX}config", "{}"))
            multiple = int(meta.get(f"{META_PREFIX}size_multiple", "1"))
            overlap = int(meta.get(f"{META_PREFIX}tile_overlap", "32"))
            self.bytes_per_pixel = float(meta.get(f"{META_PREFIX}bytes_per_pixel", "0")) or None
        except ValueError:
            raise CheckpointError(f"{self.path}: malformed deblurcli metadata") from None
        self.arch_name = f"onnx:{arch}"
        self.precision = meta.get(f"{META_PREFIX}precision", "fp32")
        # Half precision is baked into the file at export; the engine must not autocast it.
        self.arch_spec = ArchSpec(
            name=self.arch_name,
            title=f"{arch} (ONNX)",
            source=str(self.path),
            default_config={},
            size_multiple=max(1, multiple),
            fp16_safe=False,
            bf16_safe=False,
            tile_overlap=overlap,
        )

    def _session(self, device_type: str) -> Any:
        if device_type not in self._sessions:
            providers = [_CPU]
            if device_type == "cuda" and _CUDA in self.ort.get_available_providers():
                providers.insert(0, _CUDA)
            options = self.ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.log_severity_level = 3  # warnings about fallback nodes are not the user's
            try:
                self._sessions[device_type] = self.ort.InferenceSession(
                    str(self.path), sess_options=options, providers=providers
                )
            except Exception as exc:  # onnxruntime's exception types are not importable
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise CheckpointError(f"{self.path}: onnxruntime cannot run it ({first})") from None
        return self._sessions[device_type]

    @property
    def providers(self) -> list[str]:
        """The execution providers of the sessions made so far."""
        return [p for s in self._sessions.values() for p in s.get_providers()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self._session(x.device.type)
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(out).to(x.device)


def is_onnx_path(value: object) -> bool:
    """True for a local path ending in ``.onnx``."""
    return isinstance(value, str | Path) and str(value).lower().endswith(".onnx")
