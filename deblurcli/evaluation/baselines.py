"""Classical baselines scored next to the networks, for context.

* ``identity``: returns the blurry input (its row equals the blurry-input row by construction).
* ``unsharp``: unsharp masking ``x + amount·(x − G_sigma * x)``; sigma and amount are tuned
  by grid search (see below).
* ``wiener``: non-blind Wiener deconvolution with the *true* blur kernel that ``deblur blur``
  stored for each pair. Its noise-to-signal balance adapts to each image,
  ``floor + gain·sigma²`` with sigma estimated from the blurry image itself (Immerkær's
  fast noise estimator), and ``floor`` and ``gain`` are tuned the same way. It knows the
  kernel, the networks do not, so its row is labelled non-blind. Pairs without a kernel
  (noise-only, or datasets not made by ``deblur blur``) pass through unchanged.

Tuning uses :data:`TUNE_IMAGES` pairs spread evenly over the evaluated set. The methods
themselves live in :mod:`deblurcli.inference.classical` (``deblur restore`` runs them too).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from deblurcli.inference.classical import (
    WIENER_DEFAULTS,
    _otf,  # noqa: F401 (re-exported for the tests of the deconvolution)
    estimate_noise_sigma,  # noqa: F401
    unsharp_mask,
    wiener_balance,
    wiener_deconvolve,
)
from deblurcli.metrics import psnr

BASELINES = ("identity", "unsharp", "wiener")
TUNE_IMAGES = 6
UNSHARP_SIGMAS = (0.8, 1.2, 1.8, 2.5, 3.5)
UNSHARP_AMOUNTS = (0.3, 0.6, 1.0, 1.5, 2.0, 3.0)
WIENER_FLOORS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
WIENER_GAINS = (0.0, 10.0, 30.0, 100.0, 300.0)


@dataclass
class Sample:
    """One pair as H×W×C float32 arrays, plus the true kernel when the dataset has one."""

    blurred: np.ndarray
    sharp: np.ndarray
    kernel: np.ndarray | None = None


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """The project's PSNR (:func:`deblurcli.metrics.psnr`) of two same-shape arrays."""
    return float(psnr(torch.from_numpy(a), torch.from_numpy(b))[0])


@dataclass
class Baseline:
    """A pseudo-model: ``__call__`` maps a blurry H×W×C image (and kernel) to a restoration."""

    name: str
    label: str
    non_blind: bool = False
    params: dict[str, float] = field(default_factory=dict)

    def tune(self, samples: list[Sample]) -> None:  # noqa: B027 (identity has nothing to tune)
        """Pick parameters on ``samples``; a no-op for parameter-free baselines."""

    def __call__(self, blurred: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
        return blurred

    def describe(self) -> str:
        if not self.params:
            return self.label
        shown = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.label} [{shown}]"


class Unsharp(Baseline):
    def __init__(self) -> None:
        super().__init__("unsharp", "unsharp (tuned)", params={"sigma": 1.2, "amount": 1.0})

    def __call__(self, blurred: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
        return unsharp_mask(blurred, self.params["sigma"], self.params["amount"])

    def tune(self, samples: list[Sample]) -> None:
        samples = samples[:TUNE_IMAGES]
        if not samples:
            return
        best = max(
            itertools.product(UNSHARP_SIGMAS, UNSHARP_AMOUNTS),
            key=lambda p: np.mean([_psnr(unsharp_mask(s.blurred, *p), s.sharp) for s in samples]),
        )
        self.params = {"sigma": best[0], "amount": best[1]}


class Wiener(Baseline):
    def __init__(self) -> None:
        params = dict(WIENER_DEFAULTS)
        super().__init__("wiener", "wiener (true kernel)", non_blind=True, params=params)

    balance = staticmethod(wiener_balance)

    def __call__(self, blurred: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
        if kernel is None:
            return blurred
        balance = self.balance(blurred, self.params["floor"], self.params["gain"])
        return wiener_deconvolve(blurred, kernel, balance)

    def tune(self, samples: list[Sample]) -> None:
        samples = [s for s in samples if s.kernel is not None][:TUNE_IMAGES]
        if not samples:
            return

        def score(floor: float, gain: float) -> float:
            restored = [
                wiener_deconvolve(s.blurred, s.kernel, self.balance(s.blurred, floor, gain))
                for s in samples
            ]
            return float(
                np.mean([_psnr(r, s.sharp) for r, s in zip(restored, samples, strict=True)])
            )

        floor, gain = max(itertools.product(WIENER_FLOORS, WIENER_GAINS), key=lambda p: score(*p))
        self.params = {"floor": floor, "gain": gain}


def make_baseline(name: str) -> Baseline:
    """A fresh baseline by name (one of :data:`BASELINES`)."""
    if name == "identity":
        return Baseline("identity", "identity")
    if name == "unsharp":
        return Unsharp()
    if name == "wiener":
        return Wiener()
    raise KeyError(name)
