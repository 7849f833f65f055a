"""Benign score distributions and the score scale.

Every score lives on one scale: ``score = -log10(p) / SCORE_DECADES`` clipped to [0, 1], where
``p`` is the probability that a benign text scores at least this high. Distributions are
monotone splines through quantile knots (:class:`SplineCDF`); a layer's basis components are
tabulated for vectorised lookup (:class:`ComponentTable`). numpy (and scipy's PCHIP) only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import CodebookError

__all__ = [
    "DEFAULT_PROBS",
    "P_FLOOR",
    "SCORE_DECADES",
    "ComponentTable",
    "SplineCDF",
    "surprise",
    "surprise_inverse",
]

#: A p-value of 10**-SCORE_DECADES maps to score 1.0; score = -log10(p) / SCORE_DECADES.
SCORE_DECADES = 4.0
DEFAULT_PROBS = np.array(
    [
        0.001,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        0.95,
        0.975,
        0.99,
        0.995,
        0.998,
        0.999,
    ],
    dtype=np.float64,
)
P_FLOOR = 1e-12


def surprise(p: np.ndarray | float, *, clip: bool = True) -> np.ndarray:
    """Map a benign tail probability to the [0, 1] score scale (0.5 ≈ p of 1 %).

    ``clip=False`` keeps scores above 1 (p below 10**-4) apart, for ranking in evaluations.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), P_FLOOR, 1.0)
    return np.clip(-np.log10(p) / SCORE_DECADES, 0.0, 1.0 if clip else None)


def surprise_inverse(score: float) -> float:
    """The tail probability a score stands for."""
    return float(10 ** (-score * SCORE_DECADES))


class SplineCDF:
    """A smooth monotone CDF through quantile knots, with exponential tails.

    Between knots: monotone cubic (PCHIP) interpolation of (value, probability). Beyond the
    outer knots the tail probability decays exponentially with the slope of the outermost knot
    gap, which never claims more certainty than the data: the tail is at least as heavy as the
    last observed gap implies.
    """

    def __init__(self, knots: np.ndarray, probs: np.ndarray) -> None:
        from scipy.interpolate import PchipInterpolator  # scipy.interpolate is slow to import

        knots = np.asarray(knots, dtype=np.float64)
        probs = np.asarray(probs, dtype=np.float64)
        if knots.shape != probs.shape or knots.ndim != 1 or len(knots) < 3:
            raise CodebookError("a spline distribution needs matching 1-D knots and probabilities")
        # Strictly increasing values (ties from discrete data are spread by a tiny epsilon).
        span = max(float(knots[-1] - knots[0]), 1e-6)
        eps = span * 1e-9
        v = np.maximum.accumulate(knots + eps * np.arange(len(knots)))
        self.knots, self.probs = v, probs
        self._f = PchipInterpolator(v, probs, extrapolate=False)
        lo_gap = max(v[1] - v[0], span * 1e-3)
        hi_gap = max(v[-1] - v[-2], span * 1e-3)
        self._beta_lo = lo_gap / max(math.log(probs[1] / probs[0]), 1e-3)
        self._beta_hi = hi_gap / max(math.log((1 - probs[-2]) / (1 - probs[-1])), 1e-3)

    @classmethod
    def fit(cls, values: np.ndarray, probs: np.ndarray = DEFAULT_PROBS) -> SplineCDF:
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if len(values) < 20:
            raise CodebookError(
                f"need at least 20 finite values to fit a distribution, got {len(values)}"
            )
        n = len(values)
        # Keep only the tail probabilities this many samples can support.
        lo, hi = 1.0 / (n + 1), 1.0 - 1.0 / (n + 1)
        p = np.unique(np.clip(probs, lo, hi))
        return cls(np.quantile(values, p, method="linear"), p)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        v, p = self.knots, self.probs
        low, high = x < v[0], x > v[-1]
        mid = ~(low | high)
        out[mid] = np.clip(self._f(x[mid]), p[0], p[-1])
        out[low] = p[0] * np.exp((x[low] - v[0]) / self._beta_lo)
        out[high] = 1.0 - (1.0 - p[-1]) * np.exp(-(x[high] - v[-1]) / self._beta_hi)
        return out

    def sf(self, x: np.ndarray) -> np.ndarray:
        """Upper tail probability P(X > x) under the benign distribution."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        v, p = self.knots, self.probs
        high = x > v[-1]
        out[~high] = 1.0 - self.cdf(x[~high])
        out[high] = (1.0 - p[-1]) * np.exp(-(x[high] - v[-1]) / self._beta_hi)
        return np.clip(out, P_FLOOR, 1.0)

    def two_sided(self, x: np.ndarray) -> np.ndarray:
        c = self.cdf(x)
        return np.clip(2.0 * np.minimum(c, self.sf(x)), P_FLOOR, 1.0)


class ComponentTable:
    """Every basis component's spline CDF of one layer, tabulated for vectorised lookup.

    Evaluating 64 PCHIP splines one by one per request cost several milliseconds; a table of
    each spline on a fine grid (linear between grid points, the same exponential tails outside)
    answers all components of all rows in one numpy expression, within 1e-4 of the splines.
    """

    GRID = 1024

    def __init__(self, splines: Sequence[SplineCDF]) -> None:
        self.lo = np.array([sp.knots[0] for sp in splines])
        self.hi = np.array([sp.knots[-1] for sp in splines])
        grid = np.linspace(0.0, 1.0, self.GRID)
        xs = self.lo[:, None] + grid[None, :] * (self.hi - self.lo)[:, None]
        self.table = np.stack([sp.cdf(x) for sp, x in zip(splines, xs, strict=True)])
        self.p_lo = np.array([sp.probs[0] for sp in splines])
        self.p_hi = np.array([sp.probs[-1] for sp in splines])
        self.beta_lo = np.array([sp._beta_lo for sp in splines])
        self.beta_hi = np.array([sp._beta_hi for sp in splines])
        self._rows = np.arange(len(splines))

    def two_sided(self, z: np.ndarray) -> np.ndarray:
        """Two-sided benign tail probability of ``z`` ([n, k]) per component."""
        z = np.asarray(z, dtype=np.float64)
        span = np.maximum(self.hi - self.lo, 1e-12)
        t = np.clip((z - self.lo) / span, 0.0, 1.0) * (self.GRID - 1)
        i = np.minimum(t.astype(np.int64), self.GRID - 2)
        f = t - i
        cdf = self.table[self._rows, i] * (1 - f) + self.table[self._rows, i + 1] * f
        low, high = z < self.lo, z > self.hi
        cdf = np.where(low, self.p_lo * np.exp((z - self.lo) / self.beta_lo), cdf)
        sf = np.where(high, (1 - self.p_hi) * np.exp(-(z - self.hi) / self.beta_hi), 1.0 - cdf)
        return np.clip(2.0 * np.minimum(cdf, sf), P_FLOOR, 1.0)
