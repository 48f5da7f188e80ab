"""Synthesize a paired dataset from a folder of sharp photos (what ``deblur blur`` runs).

Layout under ``out``: ``sharp/<rel>``, ``blurred/<rel>``, ``kernels/<rel>.npy`` (float32, absent
for noise only) and ``manifest.jsonl`` (one JSON record per image, sorted by path). ``rel`` is
the source's relative path, with its extension changed when ``fmt`` asks for another format.

Sharp targets are never recompressed lossily: an unchanged source (no resize or crop, no
EXIF rotation, same format) is copied byte for byte; otherwise a JPEG target is written as
PNG (and WebP losslessly). Blurred JPEGs are written at :data:`JPEG_QUALITY`, recorded per
image as ``blurred_jpeg_quality`` next to the degradation's own ``jpeg_quality``.

Reproducibility: each image draws from ``np.random.default_rng(image_seed(seed, rel))`` and is
processed on its own, so the bytes written do not depend on ``workers``, order, ``shard`` or
``limit``. Resume: an image whose record is in the manifest and whose files exist is skipped.
Every file is written atomically (temporary sibling + rename), the blurred image last.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from deblurcli._process import die_with_parent
from deblurcli.degradations.degrade import KINDS, DegradeOptions, degrade, image_seed
from deblurcli.errors import DeblurError, OutputWriteError, UsageError
from deblurcli.imageio import (
    ImageData,
    atomic_path,
    atomic_write_bytes,
    encode_image,
    is_partial_file,
    looks_complete,
    output_format,
    read_image,
    scan_images,
    set_max_image_pixels,
)
from deblurcli.locks import output_lock

MANIFEST = "manifest.jsonl"
# PNG zlib level for written images. Level 1 encodes several times faster than Pillow's
# default 6 for files a little larger; it is fixed because the level changes the bytes.
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 95  # blurred images written as JPEG (the sharp ones never are)
FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}  # --format
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class Geometry:
    """Optional resize (W, H) or centre crop (N×N) applied to both images of a pair."""

    resize: tuple[int, int] | None = None
    crop: int | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and self.crop is not None:
            raise UsageError("resize and crop exclude each other: use one of them")
        if self.resize is not None and min(self.resize) < 1:
            raise UsageError("needs a positive WxH", option="resize")
        if self.crop is not None and self.crop < 1:
            raise UsageError("needs a positive size", option="crop")

    @property
    def identity(self) -> bool:
        return self.resize is None and self.crop is None


@dataclass(frozen=True)
class BlurEvent:
    """Progress of one image: status is "written", "skipped" or "failed"."""

    rel: str
    status: str
    done: int
    total: int
    message: str = ""


@dataclass
class BlurSummary:
    """What a run did."""

    out: Path
    manifest: Path
    total: int = 0
    written: int = 0
    skipped: list[str] = field(default_factory=list)  # already done (resumed), by rel path
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "manifest": str(self.manifest),
            "total": self.total,
            "written": self.written,
            "skipped": [{"path": p} for p in self.skipped],
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Job:
    source: Path
    rel: str
    out: Path
    kind: str
    seed: int
    options: DegradeOptions
    geometry: Geometry
    settings: str
    fmt: str | None = None  # "png", "jpg", "webp" or None (the source's)
    max_pixels: int | None = None

    @property
    def out_rel(self) -> str:
        """The blurred image's path under ``blurred/`` (and the record's ``path``)."""
        return output_rel(self.rel, self.fmt)


def output_rel(rel: str, fmt: str | None) -> str:
    """``rel`` with the extension of ``fmt`` (unchanged for None)."""
    if fmt is None:
        return rel
    return Path(rel).with_suffix(FORMATS[fmt]).as_posix()


def load_kernel(dataset_root: Path, rel_path: str) -> np.ndarray | None:
    """The float32 kernel of pair ``rel_path`` in a ``deblur blur`` dataset, or None."""
    path = Path(dataset_root) / "kernels" / f"{rel_path}.npy"
    if not path.is_file():
        return None
    return np.load(path, allow_pickle=False).astype(np.float32, copy=False)


def settings_digest(
    kind: str, seed: int, options: DegradeOptions, geometry: Geometry, fmt: str | None = None
) -> str:
    """Short hash of everything that decides the output bytes (kept in every record)."""
    payload: dict[str, Any] = {
        "kind": kind,
        "seed": int(seed),
        "options": options.to_dict(),
        "resize": geometry.resize,
        "crop": geometry.crop,
        "png_compress_level": PNG_COMPRESS_LEVEL,
    }
    if fmt is not None:  # absent by default, so datasets made before --format still resume
        payload["format"] = fmt
    text = json.dumps(payload, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def synthesize_dataset(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    kind: str = "mix",
    *,
    seed: int = 0,
    options: DegradeOptions | None = None,
    geometry: Geometry | None = None,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    fmt: str | None = None,
    max_pixels: int | None = None,
    progress: Callable[[BlurEvent], None] | None = None,
) -> BlurSummary:
    """Blur every image under ``source`` (recursively) into the paired layout under ``out``.

    ``shard=(i, n)`` (0 <= i < n) takes every n-th image of the sorted list starting at i;
    ``limit`` keeps the first N of those. ``workers`` defaults to all cores. Bad files are
    reported in ``summary.failed`` and the rest carries on; ``progress`` gets one event per
    image. ``fmt`` (png, jpg, webp) sets the output format, else each source's is kept;
    ``max_pixels`` raises Pillow's decompression-bomb limit (0: none). Raises
    :class:`UsageError` for unusable arguments.
    """
    started = time.perf_counter()
    if kind not in KINDS:
        raise UsageError(
            f"unknown {{option}} {kind!r}; choose from {', '.join(KINDS)}", option="kind"
        )
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(
            f"unknown {{option}} {fmt!r}; choose from {', '.join(FORMATS)}", option="format"
        )
    if max_pixels is not None:
        set_max_image_pixels(max_pixels or None)
    options = options or DegradeOptions()
    geometry = geometry or Geometry()
    src, out = Path(source), Path(out)
    found, unreadable = _scan(src, out)
    rels = _select(found, shard, limit)  # bad --shard/--limit: refused before any folder exists
    _make_output_folder(out)
    # One writer per folder; the shards of a split run may share one (disjoint images).
    with output_lock(out, "deblur blur", shared=shard is not None):
        return _synthesize(
            src, out, found, rels, unreadable, kind, seed, options, geometry, workers, shard,
            overwrite, progress, started, fmt, max_pixels,
        )  # fmt: skip


def _synthesize(
    src: Path,
    out: Path,
    found: list[str],
    rels: list[str],
    unreadable: list[tuple[str, str]],
    kind: str,
    seed: int,
    options: DegradeOptions,
    geometry: Geometry,
    workers: int | None,
    shard: tuple[int, int] | None,
    overwrite: bool,
    progress: Callable[[BlurEvent], None] | None,
    started: float,
    fmt: str | None = None,
    max_pixels: int | None = None,
) -> BlurSummary:
    manifest_path = out / _manifest_name(shard)
    settings = settings_digest(kind, seed, options, geometry, fmt)
    known = _read_records(out)
    _check_settings(known, [output_rel(r, fmt) for r in rels], settings, overwrite)

    summary = BlurSummary(out=out, manifest=manifest_path, total=len(rels))
    for folder, why in unreadable:
        summary.failed.append((folder, why))
        _emit(progress, summary, folder, "failed", f"{folder}: {why}")
    jobs: list[_Job] = []
    for rel in rels:
        job = _Job(src / rel, rel, out, kind, seed, options, geometry, settings, fmt, max_pixels)
        if not overwrite and _is_done(out, known.get(job.out_rel)):
            summary.skipped.append(job.out_rel)
            _emit(progress, summary, job.out_rel, "skipped")
        else:
            jobs.append(job)

    _check_writable(manifest_path)
    png = [Path(job.out_rel).with_suffix(".png").as_posix() for job in jobs]
    _remove_stale_parts(out, {job.rel for job in jobs} | {job.out_rel for job in jobs} | set(png))
    with open(manifest_path, "a", encoding="utf-8") as log:
        for source_rel, record, error in _run(jobs, workers):
            rel = output_rel(source_rel, fmt)
            if error is None:
                known[rel] = record
                _append(log, manifest_path, json.dumps(record, sort_keys=True) + "\n")
                summary.written += 1
                _emit(progress, summary, rel, "written")
            else:
                summary.failed.append((source_rel, error))
                _emit(progress, summary, source_rel, "failed", error)
    if shard is not None:  # a shard's manifest holds that shard's images only
        mine = {output_rel(r, fmt) for r in _select(found, shard, None)}
        known = {k: v for k, v in known.items() if k in mine}
    _write_manifest(manifest_path, known)
    summary.failed.sort()
    summary.seconds = time.perf_counter() - started
    return summary


def _emit(
    progress: Callable[[BlurEvent], None] | None,
    s: BlurSummary,
    rel: str,
    status: str,
    message: str = "",
) -> None:
    if progress is not None:
        done = s.written + len(s.skipped) + len(s.failed)
        progress(BlurEvent(rel=rel, status=status, done=done, total=s.total, message=message))


def _make_output_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the output folder ({exc.strerror})") from None


def _check_writable(manifest: Path) -> None:
    try:
        with open(manifest, "a", encoding="utf-8"):
            pass  # fail here, before any work, when the folder cannot be written
    except OSError as exc:
        raise UsageError(
            f"{manifest.parent}: cannot write the output folder ({exc.strerror})"
        ) from None


def _append(log: Any, path: Path, line: str) -> None:
    """Append one manifest record; a full disk ends the run with one line naming the file."""
    try:
        log.write(line)
        log.flush()
    except OSError as exc:
        raise OutputWriteError(f"cannot write {path}: {exc.strerror or exc}") from None


def _manifest_name(shard: tuple[int, int] | None) -> str:
    return MANIFEST if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.jsonl"


def _scan(src: Path, out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(image paths relative to ``src``, [(unreadable folder, why)])."""
    if not src.exists():
        raise UsageError(f"{src}: no such file or folder")
    if src.is_file():
        raise UsageError(f"{src}: expected a folder of images")
    out_resolved = out.resolve()
    if out_resolved == src.resolve():
        raise UsageError(
            f"-o {out} is the source folder itself; choose another output folder "
            "(sources are never overwritten)"
        )
    rels = []
    images, unreadable = scan_images(src)
    for path in images:
        resolved = path.resolve()
        if resolved == out_resolved or out_resolved in resolved.parents:
            continue  # OUT inside SRC: never feed our own results back in
        rels.append(path.relative_to(src).as_posix())
    if not rels and not unreadable:
        raise UsageError(f"{src}: no images found (looked for JPEG, PNG, WebP, TIFF, BMP)")
    problems = [(str(path), f"cannot read this folder ({why})") for path, why in unreadable]
    return sorted(rels), problems


def _select(rels: list[str], shard: tuple[int, int] | None, limit: int | None) -> list[str]:
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise UsageError(f"{index}/{count}: need 0 <= i < n", option="shard")
        rels = rels[index::count]
    if limit is not None:
        if limit < 0:
            raise UsageError("must be >= 0", option="limit")
        rels = rels[:limit]
    return rels


def _read_records(out: Path) -> dict[str, dict[str, Any]]:
    """Records from every manifest in ``out`` (a killed run may leave a truncated last line)."""
    records: dict[str, dict[str, Any]] = {}
    if not out.is_dir():
        return records
    for path in sorted(out.glob("manifest*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                records[record["path"]] = record
    return records


def _check_settings(
    known: dict[str, dict[str, Any]], rels: list[str], settings: str, overwrite: bool
) -> None:
    if overwrite:
        return
    for rel in rels:
        record = known.get(rel)
        if record is not None and record.get("settings") != settings:
            raise UsageError(
                f"{rel} in the output folder was made with other settings (kind/seed/ranges/"
                "size); pass {option} to redo it or choose another output folder",
                option="overwrite",
            )


def _is_done(out: Path, record: dict[str, Any] | None) -> bool:
    if record is None or not isinstance(record.get("sharp"), str):
        return False
    images = [out / record["sharp"], out / str(record.get("blurred"))]
    if not all(looks_complete(f) for f in images):
        return False  # empty, truncated or foreign: redo it
    return not record.get("kernel") or _non_empty(out / record["kernel"])


def _non_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0  # a power cut can leave renamed but empty files
    except OSError:
        return False


def _remove_stale_parts(out: Path, rels: set[str]) -> None:
    """Delete temporary files a killed run left for the images about to be redone.

    Only those images' leftovers: another shard may be writing into the same folder.
    """
    if not rels:
        return
    for sub in ("sharp", "blurred", "kernels"):
        base = out / sub
        for root, _dirs, files in os.walk(base):
            for name in files:
                path = Path(root) / name
                if not is_partial_file(path):
                    continue
                # atomic_path names them ".<target name>.<random>.part"
                target = path.with_name(name[1:-5].rsplit(".", 1)[0])
                rel = target.relative_to(base).as_posix()
                if sub == "kernels":
                    rel = rel.removesuffix(".npy")
                if rel in rels:
                    path.unlink(missing_ok=True)


def _write_manifest(path: Path, known: dict[str, dict[str, Any]]) -> None:
    """Rewrite the manifest sorted by path, so it does not depend on completion order."""
    text = "".join(json.dumps(known[k], sort_keys=True) + "\n" for k in sorted(known))
    atomic_write_bytes(path, text.encode("utf-8"))


def _run(jobs: list[_Job], workers: int | None) -> Iterator[tuple[str, dict | None, str | None]]:
    """Yield (rel, record, error) per job, in completion order."""
    if not jobs:
        return
    workers = min(_default_workers() if workers is None else max(1, workers), len(jobs))
    if workers == 1:
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for job in jobs:
                yield _process_safely(job)
        finally:
            cv2.setNumThreads(previous)
        return
    # fork: the workers inherit the imported modules instead of re-importing torch & co.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    init = {"initializer": _init_worker, "initargs": (os.getpid(),)}
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, **init) as pool:
        pending: set[cf.Future] = set()
        queue = iter(jobs)
        try:
            for job in queue:
                pending.add(pool.submit(_process_safely, job))
                if len(pending) >= 4 * workers:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    yield from (f.result() for f in done)
            for future in cf.as_completed(pending):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _init_worker(parent_pid: int) -> None:
    die_with_parent(parent_pid)  # a kill -9 of deblur blur must not leave workers behind
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def _process_safely(job: _Job) -> tuple[str, dict | None, str | None]:
    try:
        return job.rel, process_image(job), None
    except OutputWriteError:
        raise  # a full or read-only disk ends the run, it is no fault of this image
    except DeblurError as exc:
        return job.rel, None, exc.for_cli()  # the CLI prints the problems as they are
    except MemoryError:
        return job.rel, None, f"{job.source}: out of memory (try --resize or --crop)"
    except (OSError, ValueError, cv2.error) as exc:
        return job.rel, None, f"{job.source}: {exc}"


def process_image(job: _Job) -> dict[str, Any]:
    """Read, (resize/crop), degrade and write one pair; returns its manifest record."""
    if job.max_pixels is not None:  # a worker started without the parent's setting
        set_max_image_pixels(job.max_pixels or None)
    data = read_image(job.source)
    size_in = [int(data.pixels.shape[1]), int(data.pixels.shape[0])]
    data = _apply_geometry(data, job.geometry, job.source)
    rng = np.random.default_rng(image_seed(job.seed, job.rel))
    result = degrade(data.pixels, job.kind, rng, job.options)

    out_rel, sharp_rel = job.out_rel, _sharp_rel(job)
    sharp, blurred = job.out / "sharp" / sharp_rel, job.out / "blurred" / out_rel
    kernel_rel = None
    if result.kernel is not None:
        kernel_rel = f"kernels/{out_rel}.npy"
        with atomic_path(job.out / kernel_rel) as tmp, open(tmp, "wb") as f:
            np.save(f, result.kernel.astype(np.float32), allow_pickle=False)
    if sharp_rel == job.rel and _unchanged(job):
        # Nothing to change: the source bytes are the exact sharp image (no re-encode loss).
        with atomic_path(sharp) as tmp:
            shutil.copyfile(job.source, tmp)
    else:
        _write(sharp, data)
    blurred_format = output_format(blurred)
    _write(blurred, data.with_pixels(result.image))

    h, w = data.pixels.shape[:2]
    return {
        "path": out_rel,
        "source": job.rel,
        "seed": image_seed(job.seed, job.rel),
        "run_seed": int(job.seed),
        "kernel": kernel_rel,
        "sharp": f"sharp/{sharp_rel}",
        "blurred": f"blurred/{out_rel}",
        "source_size": size_in,
        "size": [int(w), int(h)],
        "channels": int(data.pixels.shape[2]),
        "alpha": data.alpha is not None,
        "bit_depth": data.bit_depth,
        "settings": job.settings,
        **result.record,
        # every JPEG quality used: the degradation's (above) and the file's encoding
        "blurred_jpeg_quality": JPEG_QUALITY if blurred_format == "JPEG" else None,
    }


def _unchanged(job: _Job) -> bool:
    """The sharp image is the source as it is: no resize or crop, no EXIF rotation."""
    return job.geometry.identity and _orientation(job.source) == 1


def _sharp_rel(job: _Job) -> str:
    """Where the sharp copy goes: the blurred image's name, but never a re-encoded JPEG.

    An unchanged source in the same format is copied as is; a JPEG that must be re-encoded
    (cropped, resized, rotated, or converted from another format) is written as PNG.
    """
    source_format = output_format(Path(job.rel))
    target_format = output_format(Path(job.out_rel))
    if source_format == target_format and _unchanged(job):
        return job.rel
    if target_format == "JPEG":
        return Path(job.out_rel).with_suffix(".png").as_posix()
    return job.out_rel


def _write(path: Path, image: ImageData) -> None:
    """Encode and rename into place. No fsync per file: it cost more than the encoding on
    the disks measured, and renaming already keeps a killed run from leaving a torn file."""
    data = encode_image(
        image,
        output_format(path),
        jpeg_quality=JPEG_QUALITY,
        png_compress_level=PNG_COMPRESS_LEVEL,
        webp_lossless=True,
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _orientation(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except (OSError, ValueError):
        return 1


def _apply_geometry(data: ImageData, geometry: Geometry, source: Path) -> ImageData:
    pixels, alpha = data.pixels, data.alpha
    if geometry.resize is not None:
        w, h = geometry.resize
        shrink = w * h < pixels.shape[0] * pixels.shape[1]
        interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        pixels = cv2.resize(pixels, (w, h), interpolation=interp).reshape(h, w, -1)
        pixels = np.clip(pixels, 0.0, 1.0)
        if alpha is not None:
            alpha = np.clip(cv2.resize(alpha, (w, h), interpolation=interp), 0.0, 1.0)
    elif geometry.crop is not None:
        n = geometry.crop
        h, w = pixels.shape[:2]
        if n > min(h, w):
            raise DeblurError(f"{source}: {w}x{h} is smaller than {{crop}} {n}", mentions=("crop",))
        top, left = (h - n) // 2, (w - n) // 2
        pixels = pixels[top : top + n, left : left + n]
        alpha = None if alpha is None else alpha[top : top + n, left : left + n]
    else:
        return data
    return replace(data, pixels=np.ascontiguousarray(pixels), alpha=alpha)
