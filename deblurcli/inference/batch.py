"""``restore``: deblur files, folders and globs to disk (the API behind ``deblur restore``).

Decoding the next image and encoding the previous one run in a small thread pool while the
model works on the current one. Outputs are written atomically, existing outputs are skipped
(so an interrupted batch resumes), and a bad file is reported and the batch goes on.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deblurcli.errors import DeblurError, ImageReadError, Note, UsageError
from deblurcli.imageio import (
    IMAGE_SUFFIXES,
    ImageData,
    from_tensor_layout,
    looks_complete,
    output_format,
    read_image,
    scan_images,
    set_max_image_pixels,
    to_tensor_layout,
    write_image,
)
from deblurcli.inference.classical import (
    CLASSICAL_MODELS,
    NEEDS_KERNEL,
    create_classical,
    load_kernel_file,
)
from deblurcli.inference.device import (
    pick_device,
    resolve_precision,
    reuse_freed_memory,
    set_threads,
)
from deblurcli.inference.distributed import rank_and_world, shard
from deblurcli.inference.engine import check_tiling, restore_tensor
from deblurcli.inference.fold import fold_batchnorm
from deblurcli.inference.onnx import OnnxModel, is_onnx_path
from deblurcli.locks import output_lock

log = logging.getLogger(__name__)

DEFAULT_SUFFIX = "_deblurred"
_PRECISION_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
# Hints in per-file problem lines, which the CLI prints as they are.
_USE_SUFFIX = Note("; use {suffix}", mentions=("suffix",))
_USE_RECURSIVE = Note(" (add {recursive} for subfolders)", mentions=("recursive",))
_USE_FORMAT = Note("; use {format} png, jpeg, tiff or webp", mentions=("format",))
_EXT_BY_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


@dataclass
class RestoreSummary:
    """What a batch did; ``failed`` holds (path, one-line reason).

    ``megapixels`` counts the images that were restored and written, not the failed ones
    (``seconds`` is the whole batch's time); ``outputs`` maps each done or skipped input to
    its output file.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    model: str = ""  # what restored them: the name or path asked for, or the default's name
    output: str = ""  # the -o folder (or file); empty: next to each input
    device: str = ""
    precision: str = ""  # what ran: fp32, fp16 or bf16
    megapixels: float = 0.0
    seconds: float = 0.0
    rank: int = 0
    world_size: int = 1

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["outputs"]
        for key in ("done", "skipped"):
            data[key] = [{"path": p, "output": self.outputs.get(p)} for p in getattr(self, key)]
        data["failed"] = [{"path": p, "error": e} for p, e in self.failed]
        data["megapixels_per_second"] = round(self.megapixels_per_second, 4)
        return data


class Reporter:
    """Progress callbacks (the CLI draws a rich progress bar; the default does nothing)."""

    def start(self, total: int) -> None: ...
    def file_started(self, job: Job) -> None: ...
    def tiles(self, done: int, total: int) -> None: ...
    def file_finished(self, job: Job, status: str, megapixels: float = 0.0) -> None:
        """``megapixels``: the image's size when it was restored and written, else 0."""


def resolve_model(
    value: nn.Module | str | os.PathLike[str] | None,
    arch: str | None = None,
    kernel: str | os.PathLike[str] | np.ndarray | None = None,
) -> nn.Module:
    """A loaded model as is; a classical method by name (``unsharp``, or ``wiener`` /
    ``richardson-lucy`` with ``kernel``, an array or ``.npy`` file); an ``.onnx`` file through
    onnxruntime; else ``load_model(value, arch=arch)`` (a name, path, hf:// URL, or None for
    the manifest's default; ``arch`` for files that do not name their own)."""
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, str) and value in CLASSICAL_MODELS and not Path(value).exists():
        if kernel is not None and not isinstance(kernel, np.ndarray):
            kernel = load_kernel_file(kernel)
        return create_classical(value, kernel)
    if kernel is not None:
        raise UsageError(f"is for the {' and '.join(NEEDS_KERNEL)} models only", option="kernel")
    if is_onnx_path(value):
        return OnnxModel(value)  # type: ignore[arg-type]
    from deblurcli.weights.resolve import load_model

    return load_model(value, arch=arch)


def model_label(value: nn.Module | str | os.PathLike[str] | None, *, short: bool = False) -> str:
    """How to name the model in a summary: what was asked for, or the default model's name.

    ``short`` names an existing file by its name alone, and a run folder's
    ``model.safetensors`` as ``run/model.safetensors`` (for table rows).
    """
    if value is None:
        from deblurcli.weights import default_model_name

        return default_model_name() or "default"
    if isinstance(value, nn.Module):
        return str(getattr(value, "arch_name", type(value).__name__))
    path = Path(value)
    if short and path.exists():
        parts = path.resolve().parts
        return "/".join(parts[-2:]) if path.name == "model.safetensors" else path.name
    return str(value)


def _expand(value: str | os.PathLike[str]) -> list[Path] | None:
    """Files/folders named by ``value`` (a path or a glob); None when nothing matches."""
    path = Path(value)
    if path.exists():
        return [path]
    if any(ch in str(value) for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(str(value), recursive=True))
        return matches or None
    return None


def _target_name(source: Path, suffix: str, fmt: str | None) -> str:
    ext = _EXT_BY_FORMAT.get(output_format(source, fmt), source.suffix) if fmt else source.suffix
    return f"{source.stem}{suffix}{ext}"


def plan_jobs(
    inputs: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str] | None = None,
    *,
    suffix: str | None = None,
    fmt: str | None = None,
    recursive: bool = False,
) -> tuple[list[Job], list[tuple[str, str]]]:
    """Map inputs to output paths; returns (jobs sorted by source, problems)."""
    inputs = list(inputs)
    if fmt and output_format(Path("x"), fmt) not in _EXT_BY_FORMAT:
        raise UsageError(
            f"unsupported {{option}} {fmt!r}; use png, jpeg, tiff, webp or bmp", option="format"
        )
    out_dir = Path(output) if output is not None else None
    _check_suffix(suffix)
    sfx = suffix if suffix is not None else ("" if out_dir else DEFAULT_SUFFIX)
    single_file_target = (
        out_dir is not None
        and len(inputs) == 1
        and out_dir.suffix.lower() in IMAGE_SUFFIXES
        and not out_dir.is_dir()
    )
    jobs: list[Job] = []
    problems: list[tuple[str, str]] = []
    for value in inputs:
        expanded = _expand(value)
        if expanded is None:
            problems.append((str(value), "no such file, folder or matching glob"))
            continue
        for path in expanded:
            if path.is_dir():
                jobs += _folder_jobs(path, out_dir, sfx, fmt, recursive, problems)
            elif single_file_target:
                jobs.append(Job(path, out_dir))  # type: ignore[arg-type]
            else:
                base = out_dir if out_dir is not None else path.parent
                jobs.append(Job(path, base / _target_name(path, sfx, fmt)))
    jobs, problems = _dedupe(sorted(jobs, key=lambda j: str(j.source)), problems)
    return _writable(jobs, fmt, problems)


def _check_suffix(suffix: str | None) -> None:
    """A suffix is a plain part of a file name: it can never lead outside the folder."""
    if suffix is None:
        return
    seps = {"/", os.sep, os.altsep or "/", "\0"}
    if any(ch in suffix for ch in seps) or ".." in suffix:
        raise UsageError(
            f"{suffix!r}: a suffix is part of a file name; no path separators or '..'",
            option="suffix",
        )


def _writable(
    jobs: list[Job], fmt: str | None, problems: list[tuple[str, str]]
) -> tuple[list[Job], list[tuple[str, str]]]:
    """Jobs whose output format is known, checked before any model runs."""
    kept = []
    for job in jobs:
        try:
            output_format(job.target, fmt)
        except ImageReadError:
            reason = f"cannot write {job.target.suffix or 'extension-less'} output {job.target}"
            problems.append((str(job.source), reason + _USE_FORMAT.for_cli()))
            continue
        kept.append(job)
    return kept, problems


def _folder_jobs(
    folder: Path,
    out_dir: Path | None,
    sfx: str,
    fmt: str | None,
    recursive: bool,
    problems: list[tuple[str, str]],
) -> list[Job]:
    """Jobs for the images in ``folder``, mirrored under ``out_dir`` (or in place)."""
    found, unreadable = scan_images(folder, recursive=recursive)
    problems += [(str(path), f"cannot read this folder ({why})") for path, why in unreadable]
    if not found and not unreadable:
        hint = "" if recursive else _USE_RECURSIVE.for_cli()
        problems.append((str(folder), f"no images found{hint}"))
    base = out_dir if out_dir is not None else folder
    in_place = base.resolve() == folder.resolve()
    jobs = []
    for src in found:
        if in_place and sfx and src.stem.endswith(sfx):
            continue  # our own earlier output
        if not in_place and base.resolve() in src.resolve().parents:
            continue  # inside an output folder nested in the input folder
        rel = src.relative_to(folder)
        jobs.append(Job(src, base / rel.parent / _target_name(src, sfx, fmt)))
    return jobs


def _dedupe(
    jobs: list[Job], problems: list[tuple[str, str]]
) -> tuple[list[Job], list[tuple[str, str]]]:
    seen: dict[Path, Path] = {}
    inputs = {job.source.resolve(): job.source for job in jobs}
    kept = []
    for job in jobs:
        target = job.target.resolve()
        if target == job.source.resolve():
            reason = "output would overwrite the input" + _USE_SUFFIX.for_cli()
            problems.append((str(job.source), reason))
        elif target in inputs or _same_file_as_any(job.target, inputs.values()):
            original = inputs.get(target, job.target)
            reason = f"output {job.target} would overwrite the input {original}"
            reason += _USE_SUFFIX.for_cli()
            problems.append((str(job.source), reason))
        elif target in seen:
            if seen[target] != job.source.resolve():
                reason = f"output {job.target} is also the output of {seen[target]}"
                problems.append((str(job.source), reason))
        else:
            seen[target] = job.source.resolve()
            kept.append(job)
    return kept, problems


def _same_file_as_any(target: Path, sources: Iterable[Path]) -> bool:
    """Whether ``target`` already exists as a hard link (or bind mount) of an input."""
    try:
        st = target.stat()
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    return any(_identity(s) == key for s in sources)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _side_by_side(before: ImageData, after: np.ndarray) -> ImageData:
    pixels = np.concatenate([before.pixels, after], axis=1)
    alpha = None if before.alpha is None else np.concatenate([before.alpha, before.alpha], axis=1)
    return replace(before, pixels=pixels, alpha=alpha)


def _one_writer(func: Any) -> Any:
    """Hold the -o folder's writer lock around ``restore`` (not under torchrun, whose ranks
    share the folder by design)."""

    @functools.wraps(func)
    def locked(inputs: Any, model: Any = None, output: Any = None, **options: Any) -> Any:
        if isinstance(inputs, str | os.PathLike):
            inputs = [inputs]
        inputs = list(inputs)
        folder = _output_folder(inputs, output)
        with contextlib.ExitStack() as held:
            if folder is not None and rank_and_world()[1] == 1:
                held.enter_context(output_lock(folder, "deblur restore"))
            return func(inputs, model, output, **options)

    return locked


def _output_folder(inputs: list[Any], output: str | os.PathLike[str] | None) -> Path | None:
    """The -o folder this run writes into (None: outputs next to the inputs, or one file)."""
    if output is None:
        return None
    out = Path(output)
    if out.is_dir() or out.suffix.lower() not in IMAGE_SUFFIXES or len(inputs) > 1:
        return out
    return None


@_one_writer
def restore(
    inputs: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    model: nn.Module | str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    *,
    suffix: str | None = None,
    fmt: str | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    side_by_side: bool = False,
    tile: int | str = "auto",
    tile_overlap: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 1,
    jpeg_quality: int = 95,
    max_pixels: int | None = None,
    arch: str | None = None,
    kernel: str | os.PathLike[str] | np.ndarray | None = None,
    threads: int | None = None,
    reporter: Reporter | None = None,
) -> RestoreSummary:
    """Deblur every image named by ``inputs`` and write the results; never raises per file.

    Outputs: ``output`` folder (mirroring folder inputs) or, without one, next to each input
    with ``suffix`` (default ``_deblurred``). Under torchrun each rank does its share.
    ``arch`` names the architecture of a checkpoint that does not (a ``.pth`` file);
    ``model="unsharp"``, ``"wiener"`` or ``"richardson-lucy"`` runs a classical method (the
    last two need ``kernel``, the blur kernel as an array or a ``.npy`` file).
    ``threads``: torch CPU threads (default: one per physical core, see
    :func:`~deblurcli.inference.device.default_threads`).
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    set_threads(threads)
    if max_pixels is not None:
        if max_pixels < 0:
            raise UsageError(f"must be >= 0 (0 = no limit), got {max_pixels}", option="max_pixels")
        set_max_image_pixels(max_pixels if max_pixels > 0 else None)
    rank, world = rank_and_world()
    jobs, problems = plan_jobs(inputs, output, suffix=suffix, fmt=fmt, recursive=recursive)
    summary = RestoreSummary(rank=rank, world_size=world, output=_output_label(output))
    summary.failed += problems if rank == 0 else []
    jobs = shard(jobs, rank, world)
    todo = []
    for job in jobs:
        if job.target.exists() and not overwrite and looks_complete(job.target):
            summary.skipped.append(str(job.source))  # junk (empty, truncated) is redone
            summary.outputs[str(job.source)] = str(job.target)
        else:
            todo.append(job)
    reporter = reporter or Reporter()
    reporter.start(len(todo))
    if not todo:
        return summary
    net = resolve_model(model, arch, kernel)
    if not isinstance(model, nn.Module) and isinstance(net, nn.Module):
        fold_batchnorm(net)  # loaded here, so ours to reshape for inference
    summary.model = model_label(model)
    warning = check_tiling(net, tile, tile_overlap)  # one usage error, not one per file
    if warning:
        log.warning("%s", warning)
    dev = pick_device(device)
    if dev.type == "cpu":
        reuse_freed_memory()
    # A bad --precision is one usage error, not N failures.
    dtype = resolve_precision(precision, dev, net)
    summary.device, summary.precision = str(dev), _PRECISION_NAMES.get(dtype, "fp32")
    engine = dict(
        tile=tile, tile_overlap=tile_overlap, device=dev, precision=precision,
        batch_size=batch_size, progress=reporter.tiles,
    )  # fmt: skip
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="deblur-io") as pool:
        writes: list[tuple[Job, float, Future[Any]]] = []
        ahead = pool.submit(_load, todo[0].source, side_by_side)
        for i, job in enumerate(todo):
            current = ahead
            if i + 1 < len(todo):
                ahead = pool.submit(_load, todo[i + 1].source, side_by_side)
            reporter.file_started(job)
            _remove_stale_partials(job.target)
            try:
                result, mp = _restore_file(current.result(), net, engine)
            except DeblurError as exc:
                summary.failed.append((str(job.source), _one_line(exc, job.source)))
                reporter.file_finished(job, "failed")
                continue
            kw = {"fmt": fmt, "jpeg_quality": jpeg_quality}
            writes.append((job, mp, pool.submit(write_image, job.target, result, **kw)))
            writes = _collect_writes(writes, summary, reporter, wait=len(writes) > 1)
        _collect_writes(writes, summary, reporter, wait=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _output_label(output: str | os.PathLike[str] | None) -> str:
    return "" if output is None else str(output)


def _one_line(exc: BaseException, path: Path | None = None) -> str:
    # per-file failures are printed as they are: name parameters as the command line does
    text = " ".join((exc.for_cli() if isinstance(exc, DeblurError) else str(exc)).split())
    prefix = f"{path}: "
    return text[len(prefix) :] if path is not None and text.startswith(prefix) else text


def _load(path: Path, keep_pixels: bool) -> list[Any]:
    """Decode ``path`` into [metadata, C×H×W tensor] (a list, so the caller can empty it)."""
    try:
        image = read_image(path)
        tensor = torch.from_numpy(to_tensor_layout(image.pixels))
    except MemoryError:  # one huge image fails alone; the batch goes on
        raise ImageReadError(f"{path}: out of memory while decoding") from None
    if not keep_pixels:  # the decoded HWC copy is not needed again: free it early
        image = image.with_pixels(np.empty((0, 0, image.pixels.shape[2]), np.float32))
    return [image, tensor]


def _remove_stale_partials(target: Path) -> None:
    """Temp files a killed earlier run left for this very output (never a result)."""
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
            stale.unlink(missing_ok=True)


def _restore_file(
    loaded: list[Any], model: nn.Module, engine: dict[str, Any]
) -> tuple[ImageData, float]:
    image, tensor = loaded.pop(0), loaded.pop(0)  # drop the future's references
    h, w = tensor.shape[-2:]
    try:
        out = restore_tensor(model, tensor, **engine)
    except MemoryError:
        raise DeblurError(
            "out of memory: try a smaller {tile} or {batch_size}", mentions=("tile", "batch_size")
        ) from None
    except RuntimeError as exc:  # e.g. "DefaultCPUAllocator: can't allocate memory"
        if "memory" not in str(exc).lower():
            raise DeblurError(f"the model failed on this image: {_one_line(exc)[:200]}") from None
        raise DeblurError(
            f"out of memory ({_one_line(exc)[:120]}); try a smaller {{tile}}", mentions=("tile",)
        ) from None
    except ValueError as exc:
        raise DeblurError(f"the model failed on this image: {_one_line(exc)[:200]}") from None
    del tensor
    pixels = from_tensor_layout(out.numpy(), image.is_gray)
    del out
    result = _side_by_side(image, pixels) if image.pixels.size else image.with_pixels(pixels)
    return result, h * w / 1e6


def _collect_writes(
    writes: list[tuple[Job, float, Future[Any]]],
    summary: RestoreSummary,
    reporter: Reporter,
    wait: bool,
) -> list[tuple[Job, float, Future[Any]]]:
    pending = []
    for job, mp, fut in writes:
        if not wait and not fut.done():
            pending.append((job, mp, fut))
            continue
        try:
            fut.result()
        except (OSError, ValueError, ImageReadError) as exc:
            summary.failed.append((str(job.source), f"cannot write {job.target}: {_one_line(exc)}"))
            reporter.file_finished(job, "failed")
            continue
        summary.done.append(str(job.source))
        summary.outputs[str(job.source)] = str(job.target)
        summary.megapixels += mp  # finished images only: a failed write adds nothing
        reporter.file_finished(job, "done", mp)
    return pending
