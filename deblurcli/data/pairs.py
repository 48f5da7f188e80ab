"""Find sharp/blurred pairs in the layouts users have on disk.

Three layouts are recognised:

* ``deblur blur`` output: ``ROOT/sharp/<rel>`` and ``ROOT/blurred/<rel>``;
* two explicit folders (seed 000's layout): ``--sharp DIR --blurred DIR``;
* GoPro: any folder holding ``blur/`` and ``sharp/`` side by side, found recursively
  (``GOPRO_Large/train/GOPR0372_07_00/{blur,sharp}/000047.png``).

Files are matched by relative path, then without extension, so ``a/b.png`` pairs with ``a/b.jpg``.
Unmatched files are reported as problems, never fatal; an empty result is a usage error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from deblurcli.errors import UsageError
from deblurcli.imageio import find_images


@dataclass(frozen=True)
class Pair:
    """One training or evaluation example; ``name`` is its unique relative path."""

    name: str
    sharp: Path
    blurred: Path


@dataclass
class PairScan:
    """The pairs found under a dataset and one line per file that could not be paired."""

    pairs: list[Pair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dataset_root: Path | None = None


def _files(folder: Path) -> dict[str, Path]:
    return {path.relative_to(folder).as_posix(): path for path in find_images(folder)}


def _stem(rel: str) -> str:
    return PurePosixPath(rel).with_suffix("").as_posix()


def _by_stem(files: dict[str, Path], scan: PairScan) -> dict[str, Path]:
    """Index by path without extension; two files that differ only there cannot be paired."""
    index: dict[str, Path] = {}
    for rel, path in files.items():
        key = _stem(rel)
        if key in index:
            scan.problems.append(f"{path}: same name as {index[key].name}, cannot tell which pairs")
        else:
            index[key] = path
    return index


def match_folders(sharp: Path, blurred: Path, prefix: str = "") -> PairScan:
    """Pair the images of two folders by relative path, then by path without extension."""
    sharp_files, blurred_files = _files(sharp), _files(blurred)
    scan = PairScan()
    found = {
        rel: (sharp_files.pop(rel), blurred_files.pop(rel))
        for rel in set(sharp_files) & set(blurred_files)
    }
    sharp_index, blurred_index = _by_stem(sharp_files, scan), _by_stem(blurred_files, scan)
    for key in sorted(sharp_index.keys() | blurred_index.keys()):
        s, b = sharp_index.get(key), blurred_index.get(key)
        if s is None:
            scan.problems.append(f"{b}: no sharp counterpart in {sharp}")
        elif b is None:
            scan.problems.append(f"{s}: no blurred counterpart in {blurred}")
        else:
            found[b.relative_to(blurred).as_posix()] = (s, b)
    for rel in sorted(found, key=lambda r: (_stem(r), r)):
        s, b = found[rel]
        scan.pairs.append(Pair(name=prefix + rel, sharp=s, blurred=b))
    return scan


def _gopro_sequences(root: Path) -> list[Path]:
    return sorted(
        blur.parent
        for blur in [root / "blur", *root.rglob("blur")]
        if blur.is_dir() and (blur.parent / "sharp").is_dir()
    )


def find_pairs(
    root: Path | str | None = None,
    *,
    sharp: Path | str | None = None,
    blurred: Path | str | None = None,
) -> PairScan:
    """Discover pairs under ``root`` or in the explicit ``sharp``/``blurred`` folders."""
    if sharp is not None or blurred is not None:
        if sharp is None or blurred is None or root is not None:
            raise UsageError("give either a dataset folder or both a sharp and a blurred folder")
        scan = match_folders(_existing_dir(sharp), _existing_dir(blurred))
    else:
        if root is None:
            raise UsageError("no dataset given")
        root = _existing_dir(root)
        if (root / "sharp").is_dir() and (root / "blurred").is_dir():
            scan = match_folders(root / "sharp", root / "blurred")
            scan.dataset_root = root
        else:
            scan = _scan_gopro(root)
    if not scan.pairs:
        raise UsageError(
            f"no sharp/blurred pairs found ({len(scan.problems)} unmatched files); expected "
            "DIR/sharp + DIR/blurred (deblur blur), separate sharp and blurred folders, or GoPro "
            "blur/ + sharp/"
        )
    return scan


def _scan_gopro(root: Path) -> PairScan:
    scan = PairScan()
    for seq in _gopro_sequences(root):
        rel = seq.relative_to(root).as_posix()
        part = match_folders(seq / "sharp", seq / "blur", prefix="" if rel == "." else rel + "/")
        scan.pairs += part.pairs
        scan.problems += part.problems
    return scan


def _existing_dir(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: not a folder")
    return path
