"""Blur kernels, noise, JPEG and paired-dataset synthesis (``deblur blur``).

Plain functions, usable from Python and by training for on-the-fly degradation::

    import numpy as np
    from deblurcli.degradations import degrade
    result = degrade(image, "motion", np.random.default_rng(0))
    result.image, result.kernel, result.record
"""

from deblurcli._srgb import linear_to_srgb, srgb_to_linear
from deblurcli.degradations.camera import (
    CameraDraw,
    CameraShake,
    apply_camera,
    draw_camera,
)
from deblurcli.degradations.dataset import (
    BlurEvent,
    BlurSummary,
    Geometry,
    load_kernel,
    synthesize_dataset,
)
from deblurcli.degradations.degrade import (
    BLURS,
    KINDS,
    Degradation,
    DegradeOptions,
    degrade,
    image_seed,
    parse_range,
)
from deblurcli.degradations.kernels import (
    Trajectory,
    convolve,
    defocus_kernel,
    gaussian_kernel,
    linear_motion_kernel,
    motion_kernel,
    random_trajectory,
    trajectory_kernel,
)
from deblurcli.degradations.noise import NOISE_TYPES, add_noise, jpeg_compress

__all__ = [
    "BLURS",
    "KINDS",
    "NOISE_TYPES",
    "BlurEvent",
    "BlurSummary",
    "CameraDraw",
    "CameraShake",
    "Degradation",
    "DegradeOptions",
    "Geometry",
    "Trajectory",
    "add_noise",
    "apply_camera",
    "convolve",
    "defocus_kernel",
    "degrade",
    "draw_camera",
    "gaussian_kernel",
    "image_seed",
    "jpeg_compress",
    "linear_motion_kernel",
    "linear_to_srgb",
    "load_kernel",
    "motion_kernel",
    "parse_range",
    "random_trajectory",
    "srgb_to_linear",
    "synthesize_dataset",
    "trajectory_kernel",
]
