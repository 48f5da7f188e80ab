"""Image I/O shared by every command: decode, metadata, atomic encode.

* EXIF orientation is applied on read; the EXIF written back has orientation reset to 1.
* ICC profile and EXIF are kept (all outputs but 16-bit colour TIFF, which OpenCV writes).
* 8-bit stays 8-bit; 16-bit PNG/TIFF stays 16-bit (colour 16-bit is decoded with OpenCV
  because Pillow has no 16-bit RGB mode; ICC/EXIF go into its PNG chunks by hand).
* RGBA/LA: the colour is processed, alpha is carried through untouched.
* Grayscale in → grayscale out (pixels have one channel).
* Writes go to a temporary file in the target folder and are renamed into place, so an
  interrupted run never leaves a truncated image where a result belongs.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from deblurcli.errors import ImageReadError, OutputWriteError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".pnm"}
)
_FORMAT_BY_SUFFIX = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".pnm": "PPM",
}
_SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF"})
_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_ORIENTATION_TAG = 0x0112
# TIFF tags that describe how the pixels are stored (size, depth, sample format, strips,
# tiles, compression, predictor...). Pillow's getexif() on a TIFF returns them with the
# metadata; written back with other pixels they make an unreadable or garbled file.
_TIFF_LAYOUT_TAGS = frozenset(
    {256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325}
    | {338, 339, 340, 341, 347, 530, 531, 532}
)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey stripe


@dataclass(frozen=True)
class ImageData:
    """Decoded pixels plus what is needed to write a faithful result.

    ``pixels`` is float32 H×W×C in [0, 1] with C = 1 (grayscale) or 3 (RGB).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str | None = None

    @property
    def is_gray(self) -> bool:
        return self.pixels.shape[2] == 1

    def with_pixels(self, pixels: np.ndarray) -> ImageData:
        return replace(self, pixels=pixels)


def set_max_image_pixels(limit: int | None) -> None:
    """Raise (or with None, remove) Pillow's decompression-bomb limit."""
    Image.MAX_IMAGE_PIXELS = limit


def find_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files under ``root`` by suffix, sorted for a reproducible order."""
    return scan_images(root, recursive)[0]


def scan_images(
    root: str | os.PathLike[str], recursive: bool = True
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files under ``root`` sorted, [(folder that could not be listed, why)]).

    Hidden files are left out; symlinked folders are not followed.
    """
    root = Path(root)
    found: list[Path] = []
    unreadable: list[tuple[Path, str]] = []

    def note(exc: OSError) -> None:
        unreadable.append((Path(exc.filename or root), exc.strerror or str(exc)))

    for folder, subfolders, names in os.walk(root, onerror=note):
        base = Path(folder)
        for name in names:
            path = base / name
            wanted = not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
            if wanted and path.is_file():
                found.append(path)
        if not recursive:
            subfolders.clear()
    return sorted(found), sorted(unreadable)


def looks_complete(path: str | os.PathLike[str]) -> bool:
    """Cheap check that ``path`` is a whole image, for resuming without re-decoding outputs.

    The header must parse, and PNG/JPEG files must end with their end marker (IEND / EOI);
    a 0-byte, truncated or foreign file is not complete.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with Image.open(path) as im:
            fmt, ok = im.format, im.width > 0 and im.height > 0
        with open(path, "rb") as f:
            f.seek(max(0, size - 12))
            tail = f.read()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    if fmt == "PNG":
        return ok and tail.endswith(b"IEND\xaeB`\x82")
    if fmt == "JPEG":
        return ok and tail.rstrip(b"\0").endswith(b"\xff\xd9")
    return ok


def read_image(path: str | os.PathLike[str]) -> ImageData:
    """Decode ``path``; any failure is an :class:`ImageReadError` naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return _decode(path, im)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{path}: {exc} (raise the limit with {{max_pixels}})", mentions=("max_pixels",)
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "empty file" if path.stat().st_size == 0 else f"not a readable image ({exc})"
        raise ImageReadError(f"{path}: {reason}") from None


def _decode(path: Path, im: Image.Image) -> ImageData:
    sixteen_bit_color = _is_16bit_color(im)  # the tile list is gone after load()
    im.load()
    exif = im.getexif()
    orientation = int(exif.get(_ORIENTATION_TAG, 1) or 1)
    if _ORIENTATION_TAG in exif:
        exif[_ORIENTATION_TAG] = 1
    for tag in _TIFF_LAYOUT_TAGS & set(exif):
        del exif[tag]  # a TIFF's own layout: copied into a new file they corrupt it
    meta = {
        "icc_profile": im.info.get("icc_profile"),
        "exif": exif.tobytes() if len(exif) else None,
        "format": im.format,
    }
    if sixteen_bit_color:
        pixels, alpha, depth = _decode_16bit_color(path)
    else:
        pixels, alpha, depth = _decode_pillow(im)
    if not _icc_fits(meta["icc_profile"], pixels.shape[2]):
        meta["icc_profile"] = None  # e.g. a CMYK profile no longer describes the RGB pixels
    pixels = _apply_orientation(pixels, orientation)
    if alpha is not None:
        alpha = _apply_orientation(alpha[..., None], orientation)[..., 0]
    return ImageData(pixels=pixels, alpha=alpha, bit_depth=depth, **meta)


def _icc_fits(profile: bytes | None, channels: int) -> bool:
    """Whether an ICC profile's data colour space (header bytes 16–20) matches the pixels."""
    if not profile:
        return True
    return profile[16:20] == (b"GRAY" if channels == 1 else b"RGB ")


def _is_16bit_color(im: Image.Image) -> bool:
    rawmodes = [t[3][0] if isinstance(t[3], tuple) else t[3] for t in getattr(im, "tile", [])]
    return im.mode in {"RGB", "RGBA"} and any(";16" in str(r) for r in rawmodes)


def _decode_16bit_color(path: Path) -> tuple[np.ndarray, np.ndarray | None, int]:
    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise OSError("cannot decode 16-bit colour data")
    arr = arr.astype(np.float32) / 65535.0
    if arr.ndim == 2:
        return arr[..., None], None, 16
    rgb = np.ascontiguousarray(arr[..., 2::-1])
    alpha = np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None
    return rgb, alpha, 16


def _decode_pillow(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    mode = im.mode
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        arr = np.asarray(im).astype(np.float32)
        depth = 16 if mode != "I" or arr.max(initial=0) > 255 else 8
        return (arr / (65535.0 if depth == 16 else 255.0))[..., None], None, depth
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None], None, 16
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode not in {"L", "LA", "RGB", "RGBA"}:
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, ...
    arr = np.asarray(im).astype(np.float32) / 255.0
    if im.mode == "L":
        return arr[..., None], None, 8
    if im.mode == "LA":
        return arr[..., :1].copy(), arr[..., 1].copy(), 8
    if im.mode == "RGBA":
        return arr[..., :3].copy(), arr[..., 3].copy(), 8
    return arr, None, 8


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1–8) to an H×W×C array."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def output_format(path: Path, fmt: str | None = None) -> str:
    """The Pillow format name to write ``path`` in (explicit ``fmt`` wins)."""
    if fmt:
        return fmt.upper().replace("JPG", "JPEG").replace("TIF", "TIFF").replace("TIFFF", "TIFF")
    try:
        return _FORMAT_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise ImageReadError(f"{path}: unknown output image type {path.suffix!r}") from None


def encode_image(
    image: ImageData,
    fmt: str,
    jpeg_quality: int = 95,
    png_compress_level: int | None = None,
    webp_lossless: bool = False,
) -> bytes:
    """Encode ``image`` in ``fmt`` keeping depth, alpha, ICC and EXIF where the format can.

    ``png_compress_level`` (0–9) trades PNG size for speed; None keeps the encoder default.
    WebP is lossy at ``jpeg_quality`` unless ``webp_lossless``.
    """
    sixteen = image.bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS
    alpha = image.alpha if fmt in _ALPHA_FORMATS else None
    if sixteen and not image.is_gray:
        data = _encode_16bit_color(image.pixels, alpha, fmt, png_compress_level)
        return _png_with_metadata(data, image.icc_profile, image.exif) if fmt == "PNG" else data
    im = _to_pillow(image.pixels, alpha, sixteen)
    params: dict[str, object] = {}
    if image.icc_profile:
        params["icc_profile"] = image.icc_profile
    if image.exif and fmt in {"JPEG", "PNG", "WEBP", "TIFF"}:
        params["exif"] = image.exif
    if fmt == "JPEG":
        params.update(quality=jpeg_quality, subsampling=0 if jpeg_quality >= 90 else 2)
    elif fmt == "WEBP" and webp_lossless:
        params.update(lossless=True, quality=100)
    elif fmt == "WEBP":
        params.update(quality=jpeg_quality)
    elif fmt == "TIFF":
        params.update(compression="tiff_deflate")
    elif fmt == "PNG" and png_compress_level is not None:
        params.update(compress_level=png_compress_level)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _quantize(arr: np.ndarray, sixteen: bool) -> np.ndarray:
    peak = 65535.0 if sixteen else 255.0
    out = np.rint(np.clip(arr, 0.0, 1.0) * peak)
    return out.astype(np.uint16 if sixteen else np.uint8)


def _to_pillow(pixels: np.ndarray, alpha: np.ndarray | None, sixteen: bool) -> Image.Image:
    if sixteen:  # grayscale only: Pillow's 16-bit mode
        return Image.fromarray(_quantize(pixels[..., 0], True))  # uint16 → mode I;16
    data = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    q = _quantize(data, False)
    if q.shape[2] == 1:
        return Image.fromarray(q[..., 0])
    return Image.fromarray(q)  # mode follows the channel count: LA, RGB, RGBA


def _encode_16bit_color(
    pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, png_level: int | None = None
) -> bytes:
    bgr = _quantize(pixels[..., ::-1], True)
    if alpha is not None:
        bgr = np.concatenate([bgr, _quantize(alpha[..., None], True)], axis=2)
    params = [] if fmt != "PNG" or png_level is None else [cv2.IMWRITE_PNG_COMPRESSION, png_level]
    ext = ".png" if fmt == "PNG" else ".tiff"
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
    if not ok:
        raise OSError(f"OpenCV could not encode a 16-bit {fmt}")
    return buf.tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def _png_with_metadata(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP/eXIf chunks right after IHDR (OpenCV writes neither; Pillow reads both)."""
    chunks = b""
    if icc:
        chunks += _png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(icc))
    if exif:
        chunks += _png_chunk(b"eXIf", exif.removeprefix(b"Exif\0\0"))
    end_of_ihdr = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return png[:end_of_ihdr] + chunks + png[end_of_ihdr:]


def write_image(
    path: str | os.PathLike[str],
    image: ImageData,
    *,
    fmt: str | None = None,
    jpeg_quality: int = 95,
    png_compress_level: int | None = None,
) -> Path:
    """Encode and atomically write ``image`` to ``path`` (format from ``fmt`` or the suffix)."""
    path = Path(path)
    data = encode_image(image, output_format(path, fmt), jpeg_quality, png_compress_level)
    atomic_write_bytes(path, data)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask is process-wide, so probing it while writer threads run would race.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it into place.

    On any error the temporary file is removed, so nothing half-written is left. A full,
    read-only or over-quota disk raises :class:`OutputWriteError` naming ``path`` (the whole
    run cannot go on); other write errors are re-raised as ``OSError`` naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise _write_error(exc, path, None) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; a result file gets the permissions any new file would get.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(exc, path, tmp) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _write_error(exc: OSError, path: Path, tmp: str | None) -> OSError | OutputWriteError:
    """The error to raise for ``exc`` while writing ``path`` (through ``tmp``)."""
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_ERRNOS:  # whatever file it names (shutil names the source)
        return OutputWriteError(f"cannot write {path}: {reason}")
    if exc.filename not in (None, tmp, str(path), str(path.parent)):
        return exc  # about another file (e.g. the source being copied): leave it as it is
    return OSError(exc.errno, reason, str(path))


def is_partial_file(path: Path) -> bool:
    """True for our temporary files (left only if the process was killed mid-write)."""
    return path.name.startswith(".") and path.name.endswith(".part")


def to_tensor_layout(pixels: np.ndarray) -> np.ndarray:
    """H×W×C → C×H×W float32 (grayscale is repeated to 3 channels for the RGB models)."""
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    return np.repeat(chw, 3, axis=0) if chw.shape[0] == 1 else chw


def from_tensor_layout(chw: np.ndarray, gray: bool) -> np.ndarray:
    """C×H×W → H×W×C; a grayscale source gets the channel mean back as one channel."""
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0), dtype=np.float32)
    return hwc.mean(axis=2, keepdims=True) if gray else hwc
