"""Fit a saturating learning curve to a few early points and extrapolate it.

A short probe measures held-out accuracy after a few training steps; the planned run
takes many more. We fit the power law that learning curves commonly follow,

    a(x) = a_inf - b * x^(-c),      b >= 0, 0 <= a_inf <= 1, c in (0, C_MAX]

where ``x`` is training progress (client steps so far) and ``a`` accuracy. For a fixed
exponent ``c`` the model is linear in ``(a_inf, b)``, so each ``c`` of a small grid gets
its least-squares fit in closed form; the constraints are kept by clipping and refitting.
Extrapolation is uncertain mostly through ``c``: the prediction is the average of the
grid's extrapolations weighted by their likelihood ``exp(-SSE / (2 sigma^2))`` (a flat
prior over the grid), and its standard deviation adds that spread to the residual noise
``sigma``. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXPONENTS = np.geomspace(0.05, 2.0, 40)  # the grid of c
MIN_SIGMA = 0.01  # accuracy noise floor: a held-out set of a few hundred samples is no finer


@dataclass(frozen=True)
class CurveFit:
    """A fitted curve and its extrapolation.

    Attributes
    ----------
    asymptote : float
        ``a_inf`` of the best fit.
    scale : float
        ``b`` of the best fit.
    exponent : float
        ``c`` of the best fit.
    sigma : float
        Residual standard deviation of the fit (at least ``MIN_SIGMA``).
    prediction : float
        Accuracy expected at the target progress (likelihood-weighted over the grid).
    std : float
        Its standard deviation: spread over the exponent grid plus the residual noise.
    """

    asymptote: float
    scale: float
    exponent: float
    sigma: float
    prediction: float
    std: float

    def at(self, x: float) -> float:
        """The best fit's value at progress ``x`` (> 0)."""
        return float(self.asymptote - self.scale * x ** (-self.exponent))


def _fit_exponent(x: np.ndarray, y: np.ndarray, c: float) -> tuple[float, float, float]:
    """Least-squares ``(a_inf, b, sse)`` for a fixed exponent, with ``b >= 0`` and ``a_inf`` in [0, 1]."""
    z = x ** (-c)
    design = np.column_stack([np.ones_like(z), -z])
    (a_inf, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    if b < 0:  # a falling curve: under b >= 0 the best fit is the flat line at the mean
        a_inf, b = float(np.mean(y)), 0.0
    if not 0.0 <= a_inf <= 1.0:  # pin the asymptote and refit the scale alone
        a_inf = min(max(a_inf, 0.0), 1.0)
        b = max(float(np.dot(z, a_inf - y) / np.dot(z, z)), 0.0)
    sse = float(np.sum((y - (a_inf - b * z)) ** 2))
    return float(a_inf), float(b), sse


def fit_curve(progress: Sequence[float], accuracy: Sequence[float], target: float) -> CurveFit:
    """Fit ``a(x) = a_inf - b x^-c`` to the points and extrapolate to ``target`` progress.

    Raises
    ------
    ValueError
        With fewer than two points, a non-positive or non-finite progress, or an accuracy
        outside [0, 1].
    """
    x, y = np.asarray(progress, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"a curve fit needs two or more (progress, accuracy) pairs, got {len(x)} and {len(y)}")
    if not (np.all(np.isfinite(x)) and np.all(x > 0)):
        raise ValueError(f"progress must be positive and finite, got {x.tolist()}")
    if not (np.all(np.isfinite(y)) and np.all((y >= 0) & (y <= 1))):
        raise ValueError(f"accuracy must lie in [0, 1], got {y.tolist()}")
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target progress must be positive and finite, got {target!r}")
    fits = [_fit_exponent(x, y, float(c)) for c in EXPONENTS]
    sse = np.array([f[2] for f in fits])
    best = int(np.argmin(sse))
    dof = max(len(x) - 3, 1)  # three parameters; two or three points still get a finite noise
    sigma = max(math.sqrt(sse[best] / dof), MIN_SIGMA)
    weights = np.exp(-(sse - sse[best]) / (2 * sigma**2))
    weights /= weights.sum()
    preds = np.array([a - b * target ** (-c) for (a, b, _), c in zip(fits, EXPONENTS, strict=True)])
    mean = float(np.dot(weights, preds))
    spread = float(np.sqrt(np.dot(weights, (preds - mean) ** 2)))
    a_inf, b, _ = fits[best]
    return CurveFit(
        asymptote=a_inf,
        scale=b,
        exponent=float(EXPONENTS[best]),
        sigma=sigma,
        prediction=min(max(mean, 0.0), 1.0),
        std=math.sqrt(spread**2 + sigma**2),
    )
