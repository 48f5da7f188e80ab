"""Score models and classical baselines on sharp/blurred pairs with PSNR and SSIM.

Every pair is read once; the blurry input is scored against the sharp image as the
baseline row, then each model (or pseudo-model) restores it and is scored the same way, so
every row carries its gain over doing nothing. Metrics run in torch on the chosen device, in
float64, on the float restoration (not re-quantised to 8 bits). Grayscale pairs are scored
on one channel; models see them repeated to RGB and their output is averaged back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deblurcli.archs import count_parameters
from deblurcli.data.pairs import Pair, PairScan, find_pairs
from deblurcli.degradations import load_kernel
from deblurcli.errors import DeblurError, UsageError, WeightsUnavailableError
from deblurcli.evaluation.baselines import (
    BASELINES,
    TUNE_IMAGES,
    Baseline,
    Sample,
    make_baseline,
)
from deblurcli.imageio import read_image, to_tensor_layout
from deblurcli.inference import pick_device, restore_tensor
from deblurcli.inference.batch import model_label
from deblurcli.inference.device import PRECISIONS, set_threads
from deblurcli.inference.engine import check_tiling
from deblurcli.inference.onnx import OnnxModel, is_onnx_path
from deblurcli.metrics import psnr, ssim
from deblurcli.metrics.ssim import window_size
from deblurcli.weights import list_pretrained, load_model

log = logging.getLogger(__name__)
INPUT_KEY = "blurry"
INPUT_LABEL = "blurry input"


@dataclass
class EvalOptions:
    """How to score: BasicSR conventions, inference settings, and how many pairs."""

    crop_border: int = 0
    y_channel: bool = False
    tile: int | str = "auto"
    tile_overlap: int | None = None
    device: str | None = None
    precision: str = "fp32"  # scores must not depend on the GPU's half-precision support
    limit: int | None = None
    sample: int = 4  # pairs whose pictures are kept for the report grid
    arch: str | None = None  # architecture of checkpoints that do not name theirs (.pth)
    threads: int | None = None  # torch CPU threads; None: one per physical core


@dataclass
class ImageScore:
    """One (image, row) score; gains are over the blurry input of the same image."""

    image: str
    family: str | None
    model: str
    psnr: float
    ssim: float
    psnr_gain: float
    ssim_gain: float
    seconds: float | None = None


@dataclass
class RowSummary:
    """One table row: means over the scored images."""

    key: str
    label: str
    kind: str  # "input", "baseline" or "model"
    psnr: float
    ssim: float
    psnr_gain: float
    ssim_gain: float
    images: int
    mp_per_s: float | None = None
    params: int | None = None
    non_blind: bool = False
    note: str = ""
    settings: dict[str, float] = field(default_factory=dict)
    families: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class SampleImages:
    """Pictures of one pair kept for the report (H×W×3 float32 in [0, 1])."""

    name: str
    blurred: np.ndarray
    sharp: np.ndarray
    outputs: dict[str, np.ndarray]
    psnr: dict[str, float]


@dataclass
class EvalResult:
    rows: list[RowSummary]
    images: list[ImageScore]
    problems: list[str]
    settings: dict[str, Any]
    samples: list[SampleImages] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings that do not fail the run

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (no per-image rows, no pictures)."""
        return _finite(
            {
                "settings": self.settings,
                "rows": [asdict(r) for r in self.rows],
                "problems": self.problems,
                "skipped": _skipped(self.problems),
                "notes": self.notes,
                "images_scored": len({s.image for s in self.images}),
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class Candidate:
    """A row to score: a network or a baseline, behind one ``run(x, kernel)`` call."""

    key: str
    label: str
    kind: str
    run: Callable[[torch.Tensor, np.ndarray | None], torch.Tensor]
    params: int | None = None
    non_blind: bool = False
    baseline: Baseline | None = None
    seconds: float = 0.0
    megapixels: float = 0.0
    kernels_used: int = 0


def _skipped(problems: list[str]) -> list[dict[str, str]]:
    """Problem lines ("PATH: why") as the JSON ``skipped`` list every command prints."""
    return [dict(zip(("path", "error"), line.split(": ", 1), strict=False)) for line in problems]


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: identical images (PSNR = inf) are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _model_candidate(
    model: nn.Module, key: str, label: str, options: EvalOptions, device: torch.device
) -> Candidate:
    warning = check_tiling(model, options.tile, options.tile_overlap)  # as restore does
    if warning:
        log.warning("%s", warning)
    settings = {
        "tile": options.tile,
        "tile_overlap": options.tile_overlap,
        "device": device,
        "precision": options.precision,
    }

    def run(x: torch.Tensor, kernel: np.ndarray | None) -> torch.Tensor:
        return restore_tensor(model, x, **settings)

    params = count_parameters(model) or None  # an ONNX file's weights are not torch's
    return Candidate(key, label, "model", run, params=params)


def _baseline_candidate(name: str, key: str) -> Candidate:
    baseline = make_baseline(name)

    def run(x: torch.Tensor, kernel: np.ndarray | None) -> torch.Tensor:
        hwc = x[0].permute(1, 2, 0).numpy()
        out = baseline(np.ascontiguousarray(hwc), kernel)
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None]

    return Candidate(
        key, baseline.label, "baseline", run, non_blind=baseline.non_blind, baseline=baseline
    )


def resolve_candidates(
    models: Sequence[str | nn.Module | None],
    options: EvalOptions,
    device: torch.device,
    notes: list[str] | None = None,
) -> list[Candidate]:
    """Turn ``--model`` values into rows: ``all``, baseline names, manifest names, paths."""
    values: list[tuple[str | nn.Module | None, bool]] = []  # (value, came from "all")
    for value in models:
        if isinstance(value, str) and value == "all":
            names = [entry.name for entry in list_pretrained()]
            if not names:
                raise WeightsUnavailableError(
                    "{model} all: no pretrained weights are available yet; "
                    "pass {model} PATH to a checkpoint from 'deblur train'",
                    mentions=("model",),
                )
            values += [(name, True) for name in names]
        else:
            values.append((value, False))
    candidates: list[Candidate] = []
    seen: dict[str, int] = {}
    for value, from_all in values:
        label = model_label(value, short=True)
        seen[label] = seen.get(label, 0) + 1
        key = label if seen[label] == 1 else f"{label}#{seen[label]}"
        if isinstance(value, nn.Module):
            candidates.append(_model_candidate(value, key, label, options, device))
        elif value in BASELINES and not Path(value).exists():
            candidates.append(_baseline_candidate(value, key))
        else:
            try:
                if is_onnx_path(value):
                    model: nn.Module = OnnxModel(value)
                else:
                    model = load_model(value, arch=options.arch)
            except WeightsUnavailableError as exc:
                if not from_all:
                    raise
                if notes is not None:
                    notes.append(
                        exc.extended("{model} all: skipped ", mentions=("model",)).for_cli()
                    )
                continue
            candidates.append(_model_candidate(model, key, label, options, device))
    if not candidates:
        raise WeightsUnavailableError(
            "{model} all: none of the pretrained models is available", mentions=("model",)
        )
    return candidates


def read_families(dataset_root: Path | None) -> dict[str, str]:
    """``path → family`` from a ``deblur blur`` manifest (``family`` wins over ``kind``)."""
    if dataset_root is None:
        return {}
    manifest = dataset_root / "manifest.jsonl"
    if not manifest.is_file():
        return {}
    families: dict[str, str] = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "path" in record:
            family = record.get("family") or record.get("kind")
            if family:
                families[str(record["path"])] = str(family)
    return families


def _kernel_loader(dataset_root: Path | None) -> Callable[[str], np.ndarray | None]:
    if dataset_root is None:
        return lambda name: None

    def load(name: str) -> np.ndarray | None:
        try:
            kernel = load_kernel(dataset_root, name)
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable kernel (%s); wiener leaves it unchanged", name, exc)
            return None
        if kernel is not None and not (
            kernel.ndim == 2 and np.isfinite(kernel).all() and kernel.sum() > 0
        ):
            log.warning("%s: kernel is not a 2-D blur kernel; wiener leaves it unchanged", name)
            return None
        return kernel

    return load


@dataclass
class _LoadedPair:
    pair: Pair
    blurred: torch.Tensor  # 1×3×H×W float32 on the CPU
    sharp: torch.Tensor
    gray: bool


def _load_pair(pair: Pair, options: EvalOptions) -> _LoadedPair:
    """Read one pair; any reason to skip it is a DeblurError naming the pair."""
    sharp, blurred = read_image(pair.sharp), read_image(pair.blurred)
    sh, sw = sharp.pixels.shape[:2]
    bh, bw = blurred.pixels.shape[:2]
    if (sh, sw) != (bh, bw):
        raise DeblurError(f"{pair.name}: size mismatch (sharp {sw}×{sh}, blurred {bw}×{bh})")
    if min(sh, sw) - 2 * options.crop_border < window_size():
        raise DeblurError(
            f"{pair.name}: {sw}×{sh} is too small for SSIM after cropping "
            f"{options.crop_border} px (needs {window_size()} px)"
        )

    def tensor(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(to_tensor_layout(pixels))[None]

    gray = sharp.is_gray and blurred.is_gray
    return _LoadedPair(pair, tensor(blurred.pixels), tensor(sharp.pixels), gray)


class _Scorer:
    def __init__(self, options: EvalOptions, device: torch.device) -> None:
        self.options = options
        # metrics run in float64, which MPS does not have: score Apple-GPU results on the CPU
        self.device = torch.device("cpu") if device.type == "mps" else device

    def __call__(self, out: torch.Tensor, ref: torch.Tensor, gray: bool) -> tuple[float, float]:
        out, ref = out.to(self.device), ref.to(self.device)
        if gray:
            out, ref = out.mean(dim=1, keepdim=True), ref[:, :1]
        o = self.options
        kw = {"crop_border": o.crop_border, "y_channel": o.y_channel}
        return float(psnr(out, ref, **kw)[0]), float(ssim(out, ref, **kw)[0])


def _hwc(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t[0].permute(1, 2, 0).float().numpy())


def _tune(candidates: list[Candidate], pairs: list[Pair], options: EvalOptions, kernels) -> None:
    tunable = [c for c in candidates if c.baseline is not None and c.baseline.params]
    if not tunable:
        return
    samples: list[Sample] = []
    spread = sorted(_sample_indices(len(pairs), TUNE_IMAGES))  # every family, not just the first
    for pair in [pairs[i] for i in spread]:
        try:
            loaded = _load_pair(pair, options)
        except DeblurError:
            continue  # reported by the main loop
        samples.append(Sample(_hwc(loaded.blurred), _hwc(loaded.sharp), kernels(pair.name)))
    for c in tunable:
        c.baseline.tune(samples)


def _sample_indices(n: int, k: int) -> set[int]:
    if n == 0 or k <= 0:
        return set()
    return {int(round(i)) for i in np.linspace(0, n - 1, min(k, n))}


def evaluate(
    models: Sequence[str | nn.Module | None],
    data: str | os.PathLike[str] | None = None,
    *,
    sharp: str | os.PathLike[str] | None = None,
    blurred: str | os.PathLike[str] | None = None,
    options: EvalOptions | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalResult:
    """Score ``models`` (values as for ``--model``, or loaded modules) on a pair dataset.

    Bad pairs (unreadable, size mismatch, unmatched files) are skipped and listed in
    ``result.problems``; only a dataset with no pairs at all raises.
    """
    options = options or EvalOptions()
    _check_options(options)
    set_threads(options.threads)
    scan: PairScan = find_pairs(data, sharp=sharp, blurred=blurred)
    pairs = scan.pairs[: options.limit] if options.limit else scan.pairs
    device = pick_device(options.device or "auto")
    notes: list[str] = []
    candidates = resolve_candidates(models, options, device, notes)
    needs_kernel = any(c.non_blind for c in candidates)
    kernels = _kernel_loader(scan.dataset_root if needs_kernel else None)
    _tune(candidates, pairs, options, kernels)
    run = _ScoringRun(
        candidates,
        _Scorer(options, device),
        read_families(scan.dataset_root),
        kernels,
        time_first=len(pairs) == 1,
    )
    problems = [*scan.problems, *run.score_pairs(pairs, options, progress)]
    source = str(data) if data is not None else {"sharp": str(sharp), "blurred": str(blurred)}
    settings = _settings(source, scan, run.images, options, device)
    notes += _no_kernel_notes(candidates, run.images)
    rows = summarize(run.images, candidates)
    return EvalResult(rows, run.images, problems, settings, run.samples, notes)


def _check_options(options: EvalOptions) -> None:
    if options.crop_border < 0:
        raise UsageError("must be >= 0", option="crop_border")
    if options.precision.lower() not in PRECISIONS:  # checked even when only baselines run
        raise UsageError(f"unknown precision {options.precision!r}; use {', '.join(PRECISIONS)}")


@dataclass
class _ScoringRun:
    """Scores pairs one at a time against every candidate, keeping scores and samples."""

    candidates: list[Candidate]
    score: _Scorer
    families: dict[str, str]
    kernels: Callable[[str], np.ndarray | None]
    time_first: bool  # time the first pair too, though it pays for warm-up (a lone pair)
    images: list[ImageScore] = field(default_factory=list)
    samples: list[SampleImages] = field(default_factory=list)

    def score_pairs(
        self,
        pairs: Sequence[Pair],
        options: EvalOptions,
        progress: Callable[[int, int, str], None] | None,
    ) -> list[str]:
        """Score every pair that loads; returns the problems of those that do not."""
        problems: list[str] = []
        keep = _sample_indices(len(pairs), options.sample)
        want_sample = False  # a sampled pair that could not be read passes its turn on
        for index, pair in enumerate(pairs):
            if progress:
                progress(index, len(pairs), pair.name)
            want_sample |= index in keep
            try:
                loaded = _load_pair(pair, options)
            except DeblurError as exc:
                problems.append(exc.for_cli())  # printed as it is by the CLI
                continue
            self.score_pair(loaded, keep_sample=want_sample)
            want_sample = False
        if progress:
            progress(len(pairs), len(pairs), "")
        return problems

    def score_pair(self, loaded: _LoadedPair, *, keep_sample: bool) -> None:
        name, blurred = loaded.pair.name, loaded.blurred
        timed = bool(self.images) or self.time_first  # the first scored image warms up
        family = self.families.get(name)
        base_p, base_s = self.score(blurred, loaded.sharp, loaded.gray)
        self.images.append(ImageScore(name, family, INPUT_KEY, base_p, base_s, 0.0, 0.0))
        kernel = self.kernels(name)
        sample = None
        if keep_sample:
            sample = SampleImages(name, _hwc(blurred), _hwc(loaded.sharp), {}, {INPUT_KEY: base_p})
            self.samples.append(sample)
        megapixels = blurred.shape[-2] * blurred.shape[-1] / 1e6
        for c in self.candidates:
            start = time.perf_counter()
            out = c.run(blurred, kernel)
            c.kernels_used += int(c.non_blind and kernel is not None)
            seconds = time.perf_counter() - start
            if timed:
                c.seconds += seconds
                c.megapixels += megapixels
            p, s = self.score(out, loaded.sharp, loaded.gray)
            self.images.append(
                ImageScore(name, family, c.key, p, s, p - base_p, s - base_s, seconds)
            )
            if sample is not None:
                sample.outputs[c.key] = _hwc(out)
                sample.psnr[c.key] = p


def _settings(
    source: str | dict[str, str],
    scan: PairScan,
    images: list[ImageScore],
    options: EvalOptions,
    device: torch.device,
) -> dict[str, Any]:
    """What the run was: the ``settings`` of the JSON summary and the report."""
    return {
        "data": source,
        "pairs_found": len(scan.pairs),
        "pairs_scored": len({s.image for s in images}),
        "crop_border": options.crop_border,
        "y_channel": options.y_channel,
        "tile": options.tile,
        "device": str(device),
        "precision": options.precision,
        "metrics": "PSNR (dB) and SSIM (Gaussian window, sigma 1.5, data range 1), float64",
    }


def _no_kernel_notes(candidates: list[Candidate], images: list[ImageScore]) -> list[str]:
    """A note for each non-blind baseline that scored images but never had a true kernel."""
    scored = {s.model for s in images}
    return [
        f"{c.key}: no true blur kernels in this dataset, so it returned the input"
        for c in candidates
        if c.non_blind and c.key in scored and c.kernels_used == 0
    ]


def _means(scores: list[ImageScore]) -> dict[str, float]:
    if not scores:
        nan = float("nan")
        return {"psnr": nan, "ssim": nan, "psnr_gain": nan, "ssim_gain": nan}
    return {
        "psnr": float(np.mean([s.psnr for s in scores])),
        "ssim": float(np.mean([s.ssim for s in scores])),
        "psnr_gain": float(np.mean([s.psnr_gain for s in scores])),
        "ssim_gain": float(np.mean([s.ssim_gain for s in scores])),
    }


def _row(key: str, label: str, kind: str, scores: list[ImageScore]) -> RowSummary:
    fams = sorted({s.family for s in scores if s.family})
    by_family = {f: _means([s for s in scores if s.family == f]) for f in fams}
    return RowSummary(key, label, kind, images=len(scores), families=by_family, **_means(scores))


def summarize(images: list[ImageScore], candidates: list[Candidate]) -> list[RowSummary]:
    """Table rows: the blurry input first, then each candidate in the order given."""
    rows = [_row(INPUT_KEY, INPUT_LABEL, "input", [s for s in images if s.model == INPUT_KEY])]
    for c in candidates:
        row = _row(c.key, c.label, c.kind, [s for s in images if s.model == c.key])
        row.params = c.params
        row.non_blind = c.non_blind
        if c.non_blind:
            row.note = f"true kernel known for {c.kernels_used} of {row.images} images"
        row.settings = dict(c.baseline.params) if c.baseline else {}
        row.mp_per_s = c.megapixels / c.seconds if c.seconds > 0 else None
        rows.append(row)
    return rows
