"""Camera-like blur: spatially varying shake in linear light, saturation, sensor noise, JPEG.

After RSBlur (Rim et al., ECCV 2022, "Realistic Blur Synthesis for Learning Image
Deblurring"), a blurred photo is made the way a camera makes one:

1. undo the sRGB tone curve (the blur happens to light, not to gamma-encoded values);
2. push clipped channels above 1.0 by a random boost (the sensor clipped them; the scene
   was brighter there), as RSBlur's saturation synthesis does;
3. average the image warped by the homographies ``H_t = T_t · K R_t K⁻¹`` of a handheld
   camera's rotation (yaw, pitch, roll) and small translation over the exposure, so the blur
   differs across the frame (roll blurs the corners and not the centre);
4. add Poisson–Gaussian (signal-dependent) sensor noise in linear light, then clip: the
   boosted highlights become the saturated streaks of a real long exposure;
5. redo the tone curve, then maybe JPEG-compress.

RSBlur's Bayer mosaic, white balance and colour matrices need a known camera; our sources are
finished sRGB photos, so those steps are left out (the noise is per channel).

Parameters are drawn first (:func:`draw_camera`, every random number from the generator) and
applied afterwards (:func:`apply_camera`, a pure function of the image and the draw), so the
same draws can later be applied elsewhere, e.g. batched on a GPU via :meth:`homographies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from deblurcli._srgb import linear_to_srgb, srgb_to_linear
from deblurcli.degradations import kernels as K
from deblurcli.degradations.noise import jpeg_compress

if TYPE_CHECKING:
    from deblurcli.degradations.degrade import DegradeOptions

# A full-frame sensor is 36 mm across its longer side: focal_35mm = 36 · focal / longer side.
FULL_FRAME_MM = 36.0
# Poses per exposure: one per pixel of the longest path in the frame, within these bounds
# (closer poses cost time and change nothing visible; farther ones would show as ghosts).
POSE_SPACING = 1.0
POSES = (8, 48)
# Resolution of the smooth random walks of roll and translation (samples over the exposure).
_WALK_SAMPLES = 64
_WALK_SMOOTHING = 4.0
# sRGB values from here to 1 count as (partly) clipped highlights, ramping linearly to fully.
SATURATION_LEVEL = 0.95
# JPEG quality range when none is given (as for mix).
JPEG_QUALITY = (60, 95)


@dataclass(frozen=True)
class CameraShake:
    """A camera pose per instant of the exposure (equal time each), in image terms.

    ``focal`` and ``centre`` (principal point, x, y) in pixels; ``yaw``, ``pitch``, ``roll``
    in radians (yaw moves the centre right, pitch down, roll turns about the optical axis);
    ``tx``, ``ty`` a shift in pixels and ``zoom`` a relative scale about the centre (the
    camera's translation, for a scene far enough to be a plane).
    """

    focal: float
    centre: tuple[float, float]
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    zoom: np.ndarray

    @classmethod
    def still(cls, shape: tuple[int, ...], poses: int = 8, focal: float = 1.0) -> CameraShake:
        """No motion at all (``focal`` relative to the longer side)."""
        zero = np.zeros(poses)
        return cls(focal * max(shape[:2]), _centre(shape), zero, zero, zero, zero, zero, zero)

    @property
    def poses(self) -> int:
        return len(self.yaw)

    def homographies(self) -> np.ndarray:
        """(poses, 3, 3) float64 maps from sharp-image pixels to where they land at each pose."""
        return self._homographies.copy()

    @cached_property
    def _homographies(self) -> np.ndarray:
        f, (cx, cy) = self.focal, self.centre
        k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], np.float64)
        k_inv = np.array([[1 / f, 0, -cx / f], [0, 1 / f, -cy / f], [0, 0, 1]], np.float64)
        s = 1.0 + np.asarray(self.zoom, np.float64)
        shift = np.zeros((self.poses, 3, 3))
        shift[:, 0, 0] = shift[:, 1, 1] = s
        shift[:, 0, 2] = self.tx + (1 - s) * cx
        shift[:, 1, 2] = self.ty + (1 - s) * cy
        shift[:, 2, 2] = 1.0
        return shift @ k @ _rotations(self.yaw, self.pitch, self.roll) @ k_inv

    def displacements(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """Where pixel (x, y) is at each pose, relative to (x, y)."""
        p = self._homographies @ np.array([x, y, 1.0])
        return p[:, 0] / p[:, 2] - x, p[:, 1] / p[:, 2] - y

    def psf_at(self, x: float, y: float) -> np.ndarray:
        """The local blur kernel around pixel (x, y): its path splatted like a motion kernel.

        Centred on the path's centroid (the local blur shifts nothing on average only at the
        image centre, where :func:`draw_camera` puts it).
        """
        dx, dy = self.displacements(x, y)
        return K.splat(dx, dy)

    def centre_psf(self) -> np.ndarray:
        """The kernel at the principal point: what ``deblur blur`` saves in ``kernels/``."""
        return self.psf_at(*self.centre)

    def path_length(self, x: float, y: float) -> float:
        """How far pixel (x, y) travels over the exposure, in pixels."""
        return float(self.path_lengths([(x, y)])[0])

    def path_lengths(self, points: list[tuple[float, float]]) -> np.ndarray:
        """:meth:`path_length` of several pixels at once."""
        xy = np.array([[x, y, 1.0] for x, y in points]).T  # (3, k)
        p = self._homographies @ xy  # (poses, 3, k)
        px, py = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
        return np.hypot(np.diff(px, axis=0), np.diff(py, axis=0)).sum(axis=0)

    def to_record(self) -> dict[str, Any]:
        def deg(a: np.ndarray) -> list[float]:
            return [float(v) for v in np.degrees(a)]

        return {
            "yaw_deg": deg(self.yaw),
            "pitch_deg": deg(self.pitch),
            "roll_deg": deg(self.roll),
            "tx": [float(v) for v in self.tx],
            "ty": [float(v) for v in self.ty],
            "zoom": [float(v) for v in self.zoom],
        }


@dataclass(frozen=True)
class CameraDraw:
    """Every drawn value of one camera degradation; :func:`apply_camera` needs nothing else.

    ``saturation_boost``: linear-light value added to fully clipped highlights before the
    blur (0: none). ``shot_gain``: variance of the shot noise per unit of linear signal, and
    ``read_sigma`` the standard deviation of the signal-independent part (both 0: no noise),
    realised from ``noise_seed``. ``jpeg_quality``: None for no JPEG.
    """

    shake: CameraShake
    saturation_boost: float = 0.0
    shot_gain: float = 0.0
    read_sigma: float = 0.0
    noise_seed: int = 0
    jpeg_quality: int | None = None
    params: dict[str, Any] | None = None

    @property
    def noise_record(self) -> dict[str, Any] | None:
        if self.shot_gain <= 0 and self.read_sigma <= 0:
            return None
        return {
            "type": "poisson_gaussian",
            "shot_gain": self.shot_gain,
            "read_sigma": self.read_sigma,
            "seed": self.noise_seed,
        }


def draw_camera(
    rng: np.random.Generator, shape: tuple[int, ...], opts: DegradeOptions
) -> CameraDraw:
    """Draw a camera degradation for an image of ``shape`` (H, W[, C]) from ``rng``.

    The image centre follows a Boracchi & Foi trajectory of ``opts.motion_length`` px, the
    same shake statistics as the ``motion`` kind, turned into yaw and pitch for a focal length
    of ``opts.camera_focal`` × the longer side. Roll turns through ``opts.camera_roll`` × the
    yaw/pitch angle; the translation walks ``opts.camera_translation`` × the centre's path.
    """
    h, w = shape[:2]
    focal_rel = float(rng.uniform(*opts.camera_focal))
    focal = focal_rel * max(h, w)
    length = float(rng.uniform(*opts.motion_length))
    anxiety = float(rng.uniform(*opts.motion_anxiety))
    trajectory = K.random_trajectory(rng, length, anxiety)
    roll_ratio = float(rng.uniform(*opts.camera_roll))
    translation_ratio = float(rng.uniform(*opts.camera_translation))
    roll_walk = _smooth_walk(rng, 1)
    translation_walk = _smooth_walk(rng, 3)
    boost = float(rng.uniform(*opts.camera_saturation))
    noisy = bool(rng.uniform() < opts.camera_noise_prob)
    shot_gain = _log_uniform(rng, opts.camera_shot_noise)
    read_sigma = _log_uniform(rng, opts.camera_read_ratio) * math.sqrt(shot_gain)
    noise_seed = int(rng.integers(2**63))
    jpeg_range = opts.jpeg_quality or JPEG_QUALITY
    jpeg = bool(rng.uniform() < opts.camera_jpeg_prob)
    quality = int(rng.integers(jpeg_range[0], jpeg_range[1] + 1))

    radius = 0.5 * math.hypot(h, w)
    roll_angle = roll_ratio * length / focal
    translation_px = translation_ratio * length

    def shake_at(poses: int) -> CameraShake:
        times = (np.arange(poses) + 0.5) / poses  # the middle of equal slices of the exposure
        centre_path = _resample(trajectory.points, times)
        dx, dy = centre_path.real, -centre_path.imag  # as trajectory_kernel draws it (y down)
        yaw = np.arctan(dx / focal)
        pitch = np.arctan(dy * np.cos(yaw) / focal)
        roll = _resample(roll_walk[:, 0], times) * roll_angle
        move = _resample(translation_walk, times) * translation_px
        zoom = move[:, 2] / radius  # the z translation, as pixels at the corners
        return _centred(
            CameraShake(focal, _centre(shape), yaw, pitch, roll, move[:, 0], move[:, 1], zoom)
        )

    # As many poses as the longest path in the frame has pixels, within POSES.
    shake = shake_at(POSES[1])
    longest = float(shake.path_lengths([shake.centre, *_corners(shape)]).max())
    poses = int(np.clip(math.ceil(longest / POSE_SPACING), *POSES))
    if poses != POSES[1]:
        shake = shake_at(poses)

    paths = [float(v) for v in shake.path_lengths([shake.centre, *_corners(shape)])]
    params = {
        "focal": focal,
        "focal_rel": focal_rel,
        "focal_35mm": FULL_FRAME_MM * focal_rel,
        "principal_point": list(shake.centre),
        **trajectory.params,  # length, anxiety, ...: the centre's path, as for motion
        "roll_ratio": roll_ratio,
        "translation_ratio": translation_ratio,
        "poses": poses,
        "centre_path_px": paths[0],
        "corner_path_px": max(paths[1:]),
        "saturation_boost": boost,
        "saturation_level": SATURATION_LEVEL,
        **shake.to_record(),
    }
    return CameraDraw(
        shake=shake,
        saturation_boost=boost,
        shot_gain=shot_gain if noisy else 0.0,
        read_sigma=read_sigma if noisy else 0.0,
        noise_seed=noise_seed,
        jpeg_quality=quality if jpeg else None,
        params=params,
    )


def apply_camera(
    image: np.ndarray, draw: CameraDraw, inset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(blurred sRGB image, kernel at the centre) of an H×W(×C) float image in [0, 1].

    ``inset``: render only the frame less ``inset`` pixels at each border (the margin a
    training crop cuts off anyway; they are still seen as context): 2.25× fewer pixels to
    warp for a 128 px patch in its 192 px region.
    """
    image = np.asarray(image, np.float32)
    light = srgb_to_linear(image)
    if draw.saturation_boost > 0:
        light = light + draw.saturation_boost * saturation_mask(image)
    light = integrate_exposure(light, draw.shake, inset)
    if draw.shot_gain > 0 or draw.read_sigma > 0:
        noise_rng = np.random.default_rng(draw.noise_seed)
        light = sensor_noise(light, draw.shot_gain, draw.read_sigma, noise_rng)
    out = linear_to_srgb(light)  # clips: the sensor's full well
    if draw.jpeg_quality is not None:
        out = jpeg_compress(out, draw.jpeg_quality)
    return out.astype(np.float32), draw.shake.centre_psf()


def saturation_mask(image: np.ndarray) -> np.ndarray:
    """How clipped each channel of an sRGB image looks (0..1), the image's shape.

    Per channel: only a clipped channel hides light above 1.0; the others recorded the scene
    as it was. Boosting every channel of a pixel with one clipped channel would turn
    saturated colours (a yellow petal: red at 1.0), up to 40 % of some of our photos, white
    in the blurred input, and teach a model to invent their colour back. A white highlight
    has every channel clipped and is boosted in all three. A ramp from
    :data:`SATURATION_LEVEL` keeps 8-bit and JPEG-rounded highlights from switching on and off.
    """
    return np.clip((image - SATURATION_LEVEL) / (1.0 - SATURATION_LEVEL), 0.0, 1.0)


def integrate_exposure(light: np.ndarray, shake: CameraShake, inset: int = 0) -> np.ndarray:
    """Average of the image warped by every pose (bilinear, reflecting at the borders).

    The image is padded by reflection once, as far as any pixel moves, and then warped with
    a constant border: the same result as warping with a reflecting border, at half the cost.
    ``inset``: leave out that many pixels at each border of the result.
    """
    h, w = light.shape[:2]
    if not 0 <= 2 * inset < min(h, w):
        raise ValueError(f"inset {inset} leaves nothing of a {w}x{h} image")
    out_h, out_w = h - 2 * inset, w - 2 * inset
    homographies = shake._homographies
    margin = min(_reach(homographies, light.shape, inset) + 2, max(h, w))
    padded = cv2.copyMakeBorder(light, margin, margin, margin, margin, cv2.BORDER_REFLECT_101)
    unpad = np.array([[1.0, 0, -margin], [0, 1.0, -margin], [0, 0, 1.0]])
    window = np.array([[1.0, 0, -inset], [0, 1.0, -inset], [0, 0, 1.0]])
    total = np.zeros((out_h, out_w, *light.shape[2:]), np.float32)
    for homography in homographies:
        warped = cv2.warpPerspective(
            padded, window @ homography @ unpad, (out_w, out_h), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )  # fmt: skip
        total += warped.reshape(total.shape)  # OpenCV drops a trailing channel axis of 1
    return total * np.float32(1.0 / shake.poses)


def _reach(homographies: np.ndarray, shape: tuple[int, ...], inset: int = 0) -> int:
    """How far (px, rounded up) any rendered pixel is from where it samples, at any pose."""
    h, w = shape[:2]
    xs, ys = np.meshgrid(np.linspace(inset, w - 1 - inset, 5), np.linspace(inset, h - 1 - inset, 5))
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    inverse = np.linalg.inv(homographies) @ points  # where each output pixel samples from
    sx, sy = inverse[:, 0] / inverse[:, 2], inverse[:, 1] / inverse[:, 2]
    far = max(np.abs(sx - points[0]).max(), np.abs(sy - points[1]).max())
    return int(math.ceil(far)) if np.isfinite(far) else max(h, w)


def sensor_noise(
    light: np.ndarray, shot_gain: float, read_sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Poisson–Gaussian noise on linear light: variance ``shot_gain · signal + read_sigma²``.

    The shot noise is the Gaussian approximation of the photon count's Poisson noise (Foi et
    al. 2008), close for all but the darkest few photons and several times cheaper to draw.
    Not clipped: values above 1 stay saturated once the tone curve clips them.
    """
    variance = np.float32(shot_gain) * np.maximum(light, 0.0) + np.float32(read_sigma**2)
    return light + np.sqrt(variance) * rng.standard_normal(light.shape, dtype=np.float32)


def _rotations(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(n, 3, 3) R = R_y(yaw) · R_x(pitch) · R_z(roll), camera axes x right, y down, z forward."""
    n = len(yaw)

    def axis(angle: np.ndarray, i: int, j: int, sign: float) -> np.ndarray:
        r = np.tile(np.eye(3), (n, 1, 1))
        c, s = np.cos(angle), np.sin(angle)
        r[:, i, i] = r[:, j, j] = c
        r[:, i, j], r[:, j, i] = -sign * s, sign * s
        return r

    # yaw moves the principal ray toward +x, pitch toward +y, roll turns x toward y
    return axis(yaw, 2, 0, 1.0) @ axis(pitch, 2, 1, 1.0) @ axis(roll, 0, 1, 1.0)


def _centred(shake: CameraShake) -> CameraShake:
    """Shift every pose so the image centre's path averages to zero.

    Like a motion kernel centred on its centroid: the blurred image does not drift against
    the sharp one where a deblurring network looks for the alignment.
    """
    dx, dy = shake.displacements(*shake.centre)
    return CameraShake(
        shake.focal,
        shake.centre,
        shake.yaw,
        shake.pitch,
        shake.roll,
        shake.tx - dx.mean(),
        shake.ty - dy.mean(),
        shake.zoom,
    )


def _smooth_walk(rng: np.random.Generator, dims: int) -> np.ndarray:
    """A smooth random walk over the exposure, (samples, dims), of unit path length."""
    steps = _SMOOTHING @ rng.standard_normal((_WALK_SAMPLES, dims))
    walk = np.concatenate([np.zeros((1, dims)), np.cumsum(steps, axis=0)])
    length = np.linalg.norm(np.diff(walk, axis=0), axis=1).sum()
    return walk / length if length > 0 else walk


def _smoothing_matrix(n: int, sigma: float) -> np.ndarray:
    t = np.arange(n)
    weights = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


_SMOOTHING = _smoothing_matrix(_WALK_SAMPLES, _WALK_SMOOTHING)


def _resample(samples: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Linear interpolation of evenly spaced samples over [0, 1] at ``times``."""
    grid = np.linspace(0.0, 1.0, len(samples))
    if samples.ndim == 1:
        if np.iscomplexobj(samples):
            return np.interp(times, grid, samples.real) + 1j * np.interp(times, grid, samples.imag)
        return np.interp(times, grid, samples)
    return np.stack([np.interp(times, grid, col) for col in samples.T], axis=1)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _centre(shape: tuple[int, ...]) -> tuple[float, float]:
    return ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)


def _corners(shape: tuple[int, ...]) -> list[tuple[float, float]]:
    h, w = shape[:2]
    return [(0.0, 0.0), (w - 1.0, 0.0), (0.0, h - 1.0), (w - 1.0, h - 1.0)]
