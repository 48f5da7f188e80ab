"""What the metrics share: BasicSR's conventions for comparing two images (its ``metric_util``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

# ITU-R BT.601 luma as BasicSR and MATLAB's rgb2ycbcr compute it, for images in [0, 1].
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0


def rgb_to_y(image: Tensor) -> Tensor:
    """N×3×H×W RGB in [0, 1] → N×1×H×W Y (studio range, 16/255..235/255)."""
    r, g, b = image.unbind(dim=1)
    y = _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b + _Y_OFFSET
    return y.unsqueeze(1)


def prepare_pair(
    x: Tensor, y: Tensor, crop_border: int = 0, y_channel: bool = False
) -> tuple[Tensor, Tensor]:
    """Apply the BasicSR conventions (crop border, Y channel) and promote to float64."""
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    x, y = x.double(), y.double()
    if y_channel and x.shape[1] == 3:
        x, y = rgb_to_y(x), rgb_to_y(y)
    if crop_border:
        c = crop_border
        x, y = x[..., c:-c, c:-c], y[..., c:-c, c:-c]
    return x, y


class PairMetric:
    """A full-reference metric called with the BasicSR conventions (used as a decorator).

    Wraps ``measure(x, y, data_range)`` of prepared float64 N×C×H×W tensors. The metric takes
    N×C×H×W or C×H×W tensors, crops ``crop_border`` pixels off every side, compares the Y
    channel alone when ``y_channel`` is set, and returns one value per image.
    """

    def __init__(self, measure: Callable[[Tensor, Tensor, float], Tensor]) -> None:
        self._measure = measure
        self.__name__ = self.__qualname__ = measure.__name__
        self.__module__ = measure.__module__
        self.__doc__ = measure.__doc__

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        data_range: float = 1.0,
        crop_border: int = 0,
        y_channel: bool = False,
    ) -> Tensor:
        x, y = prepare_pair(x, y, crop_border, y_channel)
        return self._measure(x, y, data_range)
