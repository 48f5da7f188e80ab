"""The sRGB transfer curves (IEC 61966-2-1), shared by photo preparation and camera blur.

NumPy only (no torch): ``deblurcli.data.photo_pool`` must import without it. In-place float32
arithmetic: the camera family runs both curves on every training patch.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """The sRGB decoding curve, float32 out (any float input in [0, 1])."""
    v = np.asarray(values, np.float32)
    high = np.asarray(np.maximum(v, np.float32(0.04045)))
    high += np.float32(0.055)
    high *= np.float32(1 / 1.055)
    high = np.asarray(np.power(high, np.float32(2.4)))
    dark = v <= 0.04045
    high[dark] = v[dark] * np.float32(1 / 12.92)
    return high


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """The sRGB encoding curve, inverse of :func:`srgb_to_linear`; input clipped to [0, 1]."""
    v = np.minimum(np.maximum(np.asarray(values, np.float32), np.float32(0)), np.float32(1))
    high = np.asarray(np.power(np.maximum(v, np.float32(0.0031308)), np.float32(1 / 2.4)))
    high *= np.float32(1.055)
    high -= np.float32(0.055)
    dark = v <= 0.0031308
    high[dark] = v[dark] * np.float32(12.92)
    return high
