"""One degradation per image: blur kernel, then optional noise, then optional JPEG.

Kinds (``KINDS``):

* ``gaussian``: Gaussian blur, isotropic or (with ``gaussian_anisotropic_prob``) anisotropic
  and rotated; σ drawn from ``gaussian_sigma`` (σ = r of PIL's ``GaussianBlur(radius=r)``).
* ``motion``: camera shake along a random Boracchi & Foi trajectory of ``motion_length`` px,
  or (with ``linear_motion_prob``) uniform straight-line motion of ``linear_length`` px.
* ``defocus``: a uniform disk of radius ``defocus_radius`` px.
* ``noise``: Gaussian or Poisson noise only, no blur.
* ``camera``: what a handheld camera does (:mod:`deblurcli.degradations.camera`, after
  RSBlur): spatially varying shake (3-D rotation + small translation, ``motion_length`` px at
  the image centre, focal length ``camera_focal`` × the longer side) integrated in linear light
  with saturated highlights, then Poisson–Gaussian noise (probability ``camera_noise_prob``),
  the sRGB curve and JPEG (probability ``camera_jpeg_prob``). Its kernel is the one at the
  image centre.
* ``mix``: per image, camera 37.5 %, motion trajectory 25 %, Gaussian 18.75 %, defocus
  9.375 %, linear motion 9.375 % (``mix_weights``); then, for the kernel blurs, noise with
  probability ``mix_noise_prob`` (30 %) and JPEG with probability ``mix_jpeg_prob`` (20 %,
  quality from ``jpeg_quality`` or 60–95); ``camera`` brings its own noise and JPEG. Seed
  000's half-motion/half-Gaussian CelebA is ``mix_weights={"motion": 0.5, "gaussian": 0.5}``.
  A ``none`` weight (0 by default) adds sharp inputs that get only the noise and JPEG, as
  blind restoration pipelines skip their blur stage at times (Real-ESRGAN, BSRGAN): a
  model that never saw a sharp input sharpens one anyway.

Noise (``noise_prob``) and JPEG (``jpeg_quality``) can be added on top of any kernel blur kind.
Every value drawn is kept in ``Degradation.record`` (JSON-able).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from deblurcli.degradations import kernels as K
from deblurcli.degradations.camera import apply_camera, draw_camera
from deblurcli.degradations.noise import NOISE_TYPES, add_noise, jpeg_compress, poisson_peak
from deblurcli.errors import UsageError

KINDS = ("gaussian", "motion", "defocus", "noise", "camera", "mix")
BLURS = ("motion", "gaussian", "defocus", "linear_motion", "camera", "none")
MIX_JPEG_QUALITY = (60, 95)


def _default_mix() -> dict[str, float]:
    # Camera-like blur first; the kernel blurs keep their old proportions (40:30:15:15).
    return {
        "camera": 0.375,
        "motion": 0.25,
        "gaussian": 0.1875,
        "defocus": 0.09375,
        "linear_motion": 0.09375,
    }


_PROBABILITIES = (
    "gaussian_anisotropic_prob",
    "linear_motion_prob",
    "noise_prob",
    "mix_noise_prob",
    "mix_jpeg_prob",
    "camera_noise_prob",
    "camera_jpeg_prob",
)


@dataclass
class DegradeOptions:
    """Ranges the per-image parameters are drawn from (uniformly, both ends included).

    Lengths, radii and σ in pixels; ``noise_sigma`` in [0, 1] image units (for Poisson noise
    it is the standard deviation at mid grey); JPEG quality 1–95.

    ``camera`` (see :mod:`deblurcli.degradations.camera`): ``camera_focal`` is the focal
    length over the image's longer side (0.6–2 ≈ 22–72 mm full-frame equivalent);
    ``camera_roll`` the roll angle's path over the yaw/pitch angle's; ``camera_translation``
    the translation's path over the centre's; ``camera_saturation`` the linear-light boost of
    clipped highlights (RSBlur's 0.25–1.75); ``camera_shot_noise`` the shot-noise variance per
    unit of linear signal and ``camera_read_ratio`` the read-noise σ over √shot (both drawn
    log-uniformly); ``camera_noise_prob`` and ``camera_jpeg_prob`` how often each happens.
    """

    gaussian_sigma: tuple[float, float] = (0.5, 3.0)
    gaussian_anisotropic_prob: float = 0.5
    motion_length: tuple[float, float] = (5.0, 25.0)
    motion_anxiety: tuple[float, float] = K.ANXIETY
    linear_motion_prob: float = 0.15
    linear_length: tuple[float, float] = (3.0, 21.0)
    defocus_radius: tuple[float, float] = (1.0, 5.0)
    noise_sigma: tuple[float, float] = (0.01, 0.05)
    noise_types: tuple[str, ...] = NOISE_TYPES
    noise_prob: float = 0.0
    jpeg_quality: tuple[int, int] | None = None
    mix_weights: dict[str, float] = field(default_factory=_default_mix)
    mix_noise_prob: float = 0.3
    mix_jpeg_prob: float = 0.2
    camera_focal: tuple[float, float] = (0.6, 2.0)
    camera_roll: tuple[float, float] = (0.0, 1.0)
    camera_translation: tuple[float, float] = (0.0, 0.2)
    camera_saturation: tuple[float, float] = (0.25, 1.75)
    camera_shot_noise: tuple[float, float] = (4e-5, 4e-3)
    camera_read_ratio: tuple[float, float] = (0.1, 1.0)
    camera_noise_prob: float = 0.8
    camera_jpeg_prob: float = 0.5

    def __post_init__(self) -> None:
        for name in ("gaussian_sigma", "motion_length", "linear_length", "defocus_radius"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {lo}..{hi}")
        lo, hi = self.motion_anxiety
        if not 0 <= lo <= hi:
            raise ValueError("motion_anxiety must be a range 0 <= low <= high")
        lo, hi = self.noise_sigma
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"noise sigma must be a range in (0, 1], got {lo}..{hi}")
        if self.jpeg_quality is not None:
            lo, hi = self.jpeg_quality
            if not 1 <= lo <= hi <= 100:
                raise ValueError(f"JPEG quality must be a range in 1..100, got {lo}..{hi}")
        if not self.noise_types or set(self.noise_types) - set(NOISE_TYPES):
            raise ValueError(f"noise types must be among {', '.join(NOISE_TYPES)}")
        unknown = set(self.mix_weights) - set(BLURS)
        if unknown or not self.mix_weights or min(self.mix_weights.values()) < 0:
            raise ValueError(f"mix weights must be non-negative, for blurs among {BLURS}")
        if sum(self.mix_weights.values()) <= 0:
            raise ValueError("mix weights must not all be zero")
        for name in ("camera_focal", "camera_shot_noise", "camera_read_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {lo}..{hi}")
        for name in ("camera_roll", "camera_translation", "camera_saturation"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range 0 <= low <= high, got {lo}..{hi}")
        for name in _PROBABILITIES:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any]) -> DegradeOptions:
        """A copy with ``overrides`` (field name -> value, as JSON gives them: lists for
        ranges) on top; an unknown field or a bad value is a :class:`UsageError` naming
        ``degrade_option``, e.g. ``{"mix_noise_prob": 0, "gaussian_sigma": [1, 3]}``."""
        types = {f.name: str(f.type) for f in fields(self)}
        unknown = sorted(set(overrides) - set(types))
        if unknown:
            raise UsageError(
                f"unknown {{option}} {', '.join(unknown)}; known: {', '.join(sorted(types))}",
                option="degrade_option",
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        for name, value in values.items():
            if not _fits(value, types[name]):
                raise UsageError(
                    f"{{option}} {name} takes {types[name]}, not {value!r}",
                    option="degrade_option",
                )
        try:
            return replace(self, **values)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{{option}}: {exc}", option="degrade_option") from None


def _fits(value: Any, annotation: str) -> bool:
    """Whether a JSON-parsed value can stand for a field annotated ``annotation``."""
    if value is None:
        return "None" in annotation
    if annotation.startswith("tuple"):
        return isinstance(value, tuple)
    if annotation.startswith("dict"):
        return isinstance(value, dict)
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Degradation:
    """A degraded image, the kernel used (None for noise only) and every parameter."""

    image: np.ndarray
    kernel: np.ndarray | None
    record: dict[str, Any]


def image_seed(seed: int, rel_path: str) -> int:
    """A per-image seed from the run seed and the image's relative path (stable anywhere)."""
    digest = hashlib.sha256(f"{int(seed)}\0{rel_path}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: fits a signed int64 / JSON


def degrade(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    options: DegradeOptions | None = None,
    inset: int = 0,
) -> Degradation:
    """Degrade an H×W(×C) float32 image in [0, 1] by ``kind`` with parameters drawn from ``rng``.

    ``inset``: return the result without that many pixels at each border (a training crop's
    margin, which the blur sees as context); ``camera`` then renders only what is returned.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {', '.join(KINDS)}")
    opts = options or DegradeOptions()
    image = np.asarray(image, np.float32)
    if not 0 <= 2 * inset < min(image.shape[:2]):
        h, w = image.shape[:2]
        raise ValueError(f"inset {inset} leaves nothing of a {w}x{h} image")
    record: dict[str, Any] = {"kind": kind, "blur": None, "blur_params": None}
    kernel = None
    noise_prob, jpeg_prob, jpeg_range = opts.noise_prob, 1.0, opts.jpeg_quality
    if kind == "noise":
        noise_prob = 1.0
    else:
        blur = _pick_blur(kind, rng, opts)
        if blur == "camera":
            return _camera(image, kind, rng, opts, inset)
        kernel, params = _sample_kernel(blur, rng, opts)
        record.update(blur=blur, blur_params=params)
        image = np.clip(K.convolve(image, kernel), 0.0, 1.0)
    record["kernel_size"] = None if kernel is None else list(kernel.shape)
    if kind == "mix":
        noise_prob, jpeg_prob = opts.mix_noise_prob, opts.mix_jpeg_prob
        jpeg_range = opts.jpeg_quality or MIX_JPEG_QUALITY
    record["noise"] = None
    if noise_prob > 0 and rng.uniform() < noise_prob:
        noise_type = str(rng.choice(list(opts.noise_types)))
        sigma = float(rng.uniform(*opts.noise_sigma))
        image = add_noise(image, noise_type, sigma, rng)
        record["noise"] = {"type": noise_type, "sigma": sigma}
        if noise_type == "poisson":
            record["noise"]["peak"] = poisson_peak(sigma)
    record["jpeg_quality"] = None
    if jpeg_range is not None and rng.uniform() < jpeg_prob:
        quality = int(rng.integers(jpeg_range[0], jpeg_range[1] + 1))
        image = jpeg_compress(image, quality)
        record["jpeg_quality"] = quality
    if inset:
        image = image[inset:-inset, inset:-inset]
    return Degradation(image=image.astype(np.float32), kernel=kernel, record=record)


def _camera(
    image: np.ndarray, kind: str, rng: np.random.Generator, opts: DegradeOptions, inset: int
) -> Degradation:
    """The camera pipeline: its own noise and JPEG, in the camera's order."""
    draw = draw_camera(rng, image.shape, opts)
    blurred, kernel = apply_camera(image, draw, inset)
    record = {
        "kind": kind,
        "blur": "camera",
        "blur_params": draw.params,
        "kernel_size": list(kernel.shape),
        "noise": draw.noise_record,
        "jpeg_quality": draw.jpeg_quality,
    }
    return Degradation(image=blurred, kernel=kernel, record=record)


def _pick_blur(kind: str, rng: np.random.Generator, opts: DegradeOptions) -> str:
    if kind == "mix":
        names = list(opts.mix_weights)
        weights = np.asarray([opts.mix_weights[n] for n in names], np.float64)
        return names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if kind == "motion":
        return "linear_motion" if rng.uniform() < opts.linear_motion_prob else "motion"
    return kind


def _sample_kernel(
    blur: str, rng: np.random.Generator, opts: DegradeOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    if blur == "gaussian":
        sx = float(rng.uniform(*opts.gaussian_sigma))
        if rng.uniform() < opts.gaussian_anisotropic_prob:
            sy, angle = float(rng.uniform(*opts.gaussian_sigma)), float(rng.uniform(0, 180))
        else:
            sy, angle = sx, 0.0
        params = {"sigma_x": sx, "sigma_y": sy, "angle": angle, "anisotropic": sx != sy}
        return K.gaussian_kernel(sx, sy, angle), params
    if blur == "motion":
        length = float(rng.uniform(*opts.motion_length))
        anxiety = float(rng.uniform(*opts.motion_anxiety))
        trajectory = K.random_trajectory(rng, length, anxiety)
        return K.trajectory_kernel(trajectory), dict(trajectory.params)
    if blur == "linear_motion":
        length, angle = float(rng.uniform(*opts.linear_length)), float(rng.uniform(0, 180))
        return K.linear_motion_kernel(length, angle), {"length": length, "angle": angle}
    if blur == "defocus":
        radius = float(rng.uniform(*opts.defocus_radius))
        return K.defocus_kernel(radius), {"radius": radius}
    if blur == "none":  # a sharp input (noise and JPEG still apply): teaches "leave it be"
        return np.ones((1, 1), np.float32), {}
    raise ValueError(f"unknown blur {blur!r}")


def parse_range(text: str, cast: type = float) -> tuple[Any, Any]:
    """``"A"`` → (A, A); ``"A:B"`` → (A, B), for CLI range options."""
    parts = text.split(":")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise ValueError(f"expected A or A:B, got {text!r}")
    lo, hi = (cast(p) for p in (parts * 2)[:2])
    if isinstance(lo, float) and not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"expected finite numbers, got {text!r}")
    if lo > hi:
        raise ValueError(f"range {text!r} has low > high")
    return lo, hi
