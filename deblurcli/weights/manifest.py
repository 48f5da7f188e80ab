"""``weights_manifest.toml``: the pretrained models that are shipped or published.

One ``[[model]]`` table per checkpoint; the example block at the top of the bundled manifest
documents every key. The manifest is validated as it is read, so a typo in a key, a missing
sha256, an architecture that is not in the registry or a file name that could escape its
folder is a one-line :class:`~deblurcli.errors.ManifestError` rather than a surprise later.

Files shipped inside the package live in ``pretrained/`` beside the manifest file (for the
bundled manifest: ``deblurcli/pretrained/``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from deblurcli._toml import tomllib
from deblurcli.archs import list_archs, resolve_config
from deblurcli.errors import (
    DeblurError,
    ManifestError,
    UnknownModelError,
    WeightsUnavailableError,
)
from deblurcli.imageio import atomic_path

# Not resolved: the symlink's folder (deblurcli/) is where shipped files live, in a checkout
# and in an installed wheel alike.
MANIFEST_PATH = Path(__file__).parent.parent / "weights_manifest.toml"
MANIFEST_ENV = "DEBLURCLI_MANIFEST"
SCHEMA_VERSION = 1

_TOP_KEYS = {"schema_version", "default", "model"}
_REQUIRED = ("name", "arch", "file", "sha256", "size", "license")
_OPTIONAL = {
    "default": bool,
    "config": dict,
    "dataset": str,
    "recipe": str,
    "scores": dict,
    "benchmark": str,
    "hub_repo": str,
    "revision": str,
    "shipped": bool,
    "description": str,
    "cpu_bf16": bool,
    "cpu_bf16_psnr_delta": (int, float),
}
# bf16 on the CPU must move the benchmark PSNR by at most this much against fp32 (issue 15).
CPU_BF16_MAX_DB = 0.05
_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "arch": str,
    "file": str,
    "sha256": str,
    "size": int,
    "license": str,
    **_OPTIONAL,
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TAG = re.compile(r"[a-z0-9][a-z0-9_-]*")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class PretrainedEntry:
    """One pretrained checkpoint described by the manifest."""

    name: str
    arch: str
    file: str
    sha256: str
    size: int
    license: str
    package_dir: Path
    default: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    recipe: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    benchmark: str = ""
    hub_repo: str | None = None
    revision: str | None = None
    shipped: bool = False
    description: str = ""
    cpu_bf16: bool | None = None  # None: never measured, so fp32 on the CPU
    cpu_bf16_psnr_delta: float | None = None  # benchmark PSNR, bf16 minus fp32 (dB)

    @property
    def tag(self) -> str:
        """The part after ``arch.``; empty for an entry named by its bare arch."""
        return self.name.partition(".")[2]

    @property
    def package_path(self) -> Path:
        """Where the file lives when it is shipped inside the package."""
        return self.package_dir / self.file

    @property
    def hub_url(self) -> str | None:
        """``hf://owner/repo/file@revision`` when published on the Hub."""
        if self.hub_repo is None:
            return None
        return f"hf://{self.hub_repo}/{self.file}@{self.revision}"


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its entries and the default model name."""

    path: Path
    entries: tuple[PretrainedEntry, ...]
    default: str | None = None

    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def _fail(where: str, message: str) -> ManifestError:
    return ManifestError(f"{where}: {message}")


def _check_types(where: str, raw: dict[str, Any]) -> None:
    unknown = sorted(set(raw) - set(_TYPES))
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(_TYPES)}")
    for key in _REQUIRED:
        if key not in raw:
            raise _fail(where, f"missing required key '{key}'")
    for key, value in raw.items():
        expected = _TYPES[key]
        is_int = expected is int or expected == (int, float)
        if not isinstance(value, expected) or (is_int and isinstance(value, bool)):
            kind = "number" if expected == (int, float) else expected.__name__  # type: ignore[union-attr]
            raise _fail(where, f"'{key}' must be a {kind}")


def _check_cpu_bf16(where: str, raw: dict[str, Any]) -> None:
    """``cpu_bf16 = true`` only with a measured PSNR change within :data:`CPU_BF16_MAX_DB`."""
    delta = raw.get("cpu_bf16_psnr_delta")
    if raw.get("cpu_bf16") and (delta is None or abs(delta) > CPU_BF16_MAX_DB):
        raise _fail(
            where,
            f"cpu_bf16 = true needs cpu_bf16_psnr_delta within ±{CPU_BF16_MAX_DB} dB "
            "(the benchmark PSNR change of bf16 against fp32)",
        )


def _check_name(where: str, name: str, arch: str) -> None:
    if arch not in list_archs():
        raise _fail(where, f"arch '{arch}' is not in the registry ({', '.join(list_archs())})")
    bare, dot, tag = name.partition(".")
    if bare != arch or (dot and not _TAG.fullmatch(tag)):
        raise _fail(where, f"name '{name}' must be '{arch}' or '{arch}.<tag>' (tag: [a-z0-9_-])")


def _check_file(where: str, file: str) -> None:
    # A bare name only: the file joins a package folder and a Hub cache path, so separators,
    # '..' or a leading dot could make it escape them.
    if not _FILE.fullmatch(file) or ".." in file:
        raise _fail(
            where, f"file '{file}' must be a plain '*.safetensors' file name (no folders, no '..')"
        )


def _check_publishing(where: str, raw: dict[str, Any]) -> None:
    repo, revision = raw.get("hub_repo"), raw.get("revision")
    if repo is not None and not _REPO.fullmatch(repo):
        raise _fail(where, f"hub_repo '{repo}' must look like 'owner/name'")
    if (repo is None) != (revision is None):
        raise _fail(where, "hub_repo and revision go together (revision pins a commit)")
    if revision is not None and not _COMMIT.fullmatch(revision):
        raise _fail(where, f"revision '{revision}' must be a full 40-hex commit hash (pinned)")


def _parse_entry(where: str, raw: dict[str, Any], package_dir: Path) -> PretrainedEntry:
    _check_types(where, raw)
    _check_name(where, raw["name"], raw["arch"])
    where = f"{where} ('{raw['name']}')"
    _check_file(where, raw["file"])
    if not _SHA256.fullmatch(raw["sha256"]):
        raise _fail(where, "sha256 must be 64 lowercase hex digits")
    if raw["size"] <= 0:
        raise _fail(where, "size must be a positive number of bytes")
    _check_publishing(where, raw)
    _check_cpu_bf16(where, raw)
    try:
        resolve_config(raw["arch"], **raw.get("config", {}))
    except DeblurError as exc:
        raise _fail(where, f"config: {exc}") from None
    scores = raw.get("scores", {})
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()):
        raise _fail(where, "scores must map metric names to numbers")
    return PretrainedEntry(
        **{k: v for k, v in raw.items() if k not in {"scores", "cpu_bf16_psnr_delta"}},
        scores={k: float(v) for k, v in scores.items()},
        cpu_bf16_psnr_delta=_float_or_none(raw.get("cpu_bf16_psnr_delta")),
        package_dir=package_dir,
    )


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _check_defaults(where: str, entries: list[PretrainedEntry], default: str | None) -> None:
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(where, f"duplicate model name(s) {', '.join(dupes)}")
    for arch in sorted({e.arch for e in entries}):
        tags = [e for e in entries if e.arch == arch]
        marked = [e.name for e in tags if e.default or e.name == arch]
        if len(marked) > 1:
            raise _fail(where, f"{arch}: more than one default ({', '.join(marked)})")
        if len(tags) > 1 and not marked:
            raise _fail(where, f"{arch}: several tags, so mark one 'default = true'")
    if default is not None and default not in names and default not in {e.arch for e in entries}:
        raise _fail(where, f"default '{default}' is not a model in this manifest")


def parse_manifest(data: dict[str, Any], path: Path, package_dir: Path | None = None) -> Manifest:
    """Validate the TOML ``data`` read from ``path`` into a :class:`Manifest`."""
    where = str(path)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _fail(where, f"unknown top-level key(s) {', '.join(unknown)}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise _fail(where, f"schema_version must be {SCHEMA_VERSION}")
    models = data.get("model", [])
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise _fail(where, "'model' must be an array of tables ([[model]])")
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise _fail(where, "'default' must be a model name")
    package_dir = package_dir or path.parent / "pretrained"
    entries = [
        _parse_entry(f"{where}: model #{i + 1}", raw, package_dir) for i, raw in enumerate(models)
    ]
    _check_defaults(where, entries, default)
    return Manifest(path=path, entries=tuple(entries), default=default)


_CACHE: dict[tuple[str, int, int], Manifest] = {}


def manifest_path() -> Path:
    """The manifest in use: ``$DEBLURCLI_MANIFEST`` if set, else the bundled one."""
    env = os.environ.get(MANIFEST_ENV)
    return Path(env).expanduser() if env else MANIFEST_PATH


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Read and validate a manifest (default: :func:`manifest_path`); cached per file version."""
    path = Path(path) if path is not None else manifest_path()
    try:
        stat = path.stat()
        key = (str(path.absolute()), stat.st_mtime_ns, stat.st_size)
        if key not in _CACHE:
            with open(path, "rb") as f:
                _CACHE[key] = parse_manifest(tomllib.load(f), path)
    except FileNotFoundError:
        hint = f" (set by {MANIFEST_ENV})" if os.environ.get(MANIFEST_ENV) else ""
        raise ManifestError(f"{path}: no such weights manifest{hint}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not valid TOML ({exc})") from None
    return _CACHE[key]


ManifestLike = Manifest | str | os.PathLike[str] | None


def as_manifest(manifest: ManifestLike) -> Manifest:
    """Accept a :class:`Manifest`, a path to one, or None (the manifest in use)."""
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)


def list_pretrained(manifest: ManifestLike = None) -> list[PretrainedEntry]:
    """Every pretrained entry, in manifest order."""
    return list(as_manifest(manifest).entries)


def pretrained_archs(manifest: ManifestLike = None) -> set[str]:
    """Architectures with at least one pretrained entry in the manifest."""
    return {e.arch for e in as_manifest(manifest).entries}


def default_model_name(manifest: ManifestLike = None) -> str | None:
    """What ``--model`` means when omitted: the manifest's ``default``, else its first model."""
    m = as_manifest(manifest)
    if m.default is not None:
        return get_pretrained(m.default, m).name
    return m.entries[0].name if m.entries else None


def find_pretrained(name: str, manifest: ManifestLike = None) -> PretrainedEntry | None:
    """The entry called ``name``; a bare arch name means that arch's default tag."""
    entries = as_manifest(manifest).entries
    for e in entries:
        if e.name == name:
            return e
    same_arch = [e for e in entries if e.arch == name]
    marked = [e for e in same_arch if e.default]
    # Validation guarantees at most one default per arch, and one when there are several tags.
    return (marked or same_arch or [None])[0]


def get_pretrained(name: str, manifest: ManifestLike = None) -> PretrainedEntry:
    """Like :func:`find_pretrained`, but an unknown name is a one-line user error."""
    m = as_manifest(manifest)
    entry = find_pretrained(name, m)
    if entry is not None:
        return entry
    if not m.entries:
        raise WeightsUnavailableError(
            f"'{name}': no pretrained weights are available yet; pass {{model}} PATH to a "
            "model.safetensors written by 'deblur train'",
            mentions=("model",),
        )
    raise UnknownModelError(
        f"'{name}' is not a pretrained model; known: {', '.join(m.names())} "
        "(or pass {model} PATH to a checkpoint)",
        mentions=("model",),
    )


# ---------------------------------------------------------------- writing

_DEFAULT_LINE = re.compile(r"default\s*=")


def toml_value(value: Any) -> str:
    """A TOML literal for the JSON-like ``value`` (JSON strings are valid TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def entry_block(table: dict[str, Any]) -> str:
    """The ``[[model]]`` table ``table`` (manifest keys to values) as manifest text."""
    lines = ["[[model]]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def entry_table(entry: PretrainedEntry) -> dict[str, Any]:
    """The manifest table of a parsed ``entry``: what :func:`entry_block` writes back.

    Keys left at the value an absent key reads as are left out; :func:`parse_manifest`
    reads the table back into an equal entry.
    """
    table: dict[str, Any] = {}
    for key in _TYPES:
        value = getattr(entry, key)
        if key in _REQUIRED or not _is_unset(key, value):
            table[key] = value
    return table


def _is_unset(key: str, value: Any) -> bool:
    """Whether ``value`` is what ``key`` reads as when absent (``False`` is not ``None``)."""
    f = next(f for f in fields(PretrainedEntry) if f.name == key)
    unset = f.default_factory() if f.default_factory is not MISSING else f.default
    return type(value) is type(unset) and value == unset


def split_manifest_text(text: str) -> tuple[str, list[str]]:
    """(head, ``[[model]]`` blocks) of a manifest's text; the head keeps its comments."""
    parts = text.split("\n[[model]]\n")
    if text.startswith("[[model]]\n"):
        return "", ["[[model]]\n" + p for p in text.split("[[model]]\n")[1:]]
    return parts[0].rstrip("\n") + "\n", ["[[model]]\n" + p for p in parts[1:]]


def format_manifest(head: str, blocks: list[str], default: str | None) -> str:
    """Manifest text: ``head`` (comments, ``schema_version``) with ``default``, then ``blocks``.

    A ``default =`` line in ``head`` is replaced by ``default`` (dropped when None).
    """
    lines = [ln for ln in head.splitlines() if not _DEFAULT_LINE.match(ln)]
    if default is not None:
        lines.append(f"default = {toml_value(default)}")
    body = [b.rstrip("\n") + "\n" for b in blocks]
    return "\n".join(lines) + "\n\n" + "\n".join(body)


def write_manifest(path: Path, tables: list[dict[str, Any]], default: str | None) -> Manifest:
    """Add or replace ``tables`` (by name) in the manifest at ``path``; set ``default``.

    Comments and other models' text are kept; the result is validated before it replaces
    the file (atomically), so a manifest that would not load is never written. A link is
    followed: the file it points to is replaced, the link stays.
    """
    path = path.resolve()  # the package's manifest is a link to the repository's: keep it
    head, blocks = split_manifest_text(path.read_text(encoding="utf-8"))
    names = {t["name"] for t in tables}
    kept = [b for b in blocks if tomllib.loads(b)["model"][0]["name"] not in names]
    text = format_manifest(head, kept + [entry_block(t) for t in tables], default)
    manifest = parse_manifest(tomllib.loads(text), path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return manifest
