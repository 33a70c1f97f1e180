"""Tests for the learning-curve fit and its extrapolation."""

import numpy as np
import pytest

from strategies.selection.learning_curve import fit_curve


def _power_law(x, a_inf=0.85, b=0.4, c=0.5):
    return a_inf - b * np.asarray(x, dtype=float) ** (-c)


@pytest.mark.parametrize(
    "a_inf, b, c",
    [
        (0.85, 0.4, 0.5),  # a typical curve
        (0.95, 0.6, 0.3),  # slow saturation
        (0.70, 0.5, 1.0),  # fast saturation
    ],
)
def test_exact_power_law_is_recovered_and_extrapolated(a_inf, b, c):
    # Prepare: six noiseless points of the first 32 steps
    x = [1, 2, 4, 8, 16, 32]

    # Execute
    fit = fit_curve(x, _power_law(x, a_inf, b, c), target=1000)

    # Assert: the best fit lands on the true curve at 1000 steps; the averaged prediction is
    # within its own uncertainty of it
    assert fit.at(1000) == pytest.approx(_power_law(1000, a_inf, b, c), abs=0.01)
    assert abs(fit.prediction - _power_law(1000, a_inf, b, c)) <= fit.std
    assert fit.asymptote == pytest.approx(a_inf, abs=0.02)
    assert fit.exponent == pytest.approx(c, rel=0.1)


def test_noisy_curve_prediction_covers_the_truth_within_its_uncertainty():
    # Prepare: the curve of the first test plus +-0.02 noise, seeded
    rng = np.random.default_rng(0)
    x = np.array([2, 4, 6, 8, 10, 12])
    y = _power_law(x) + rng.normal(0, 0.02, len(x))

    # Execute
    fit = fit_curve(x, y, target=64)

    # Assert: within two standard deviations, and the uncertainty is not vanishing
    assert abs(fit.prediction - _power_law(64)) <= 2 * fit.std
    assert fit.std >= 0.02


def test_extrapolating_further_is_less_certain():
    # Prepare
    x = [1, 2, 3]
    y = [0.55, 0.62, 0.66]

    # Execute
    near, far = fit_curve(x, y, target=4), fit_curve(x, y, target=400)

    # Assert
    assert far.std > near.std
    assert far.prediction >= near.prediction  # a learning curve never falls in the fit


def test_flat_curve_predicts_its_level():
    # Prepare: a model that does not learn (the random tiny model on real text)
    x, y = [4, 8, 12], [0.57, 0.57, 0.57]

    # Execute
    fit = fit_curve(x, y, target=64)

    # Assert
    assert fit.prediction == pytest.approx(0.57, abs=1e-9)


def test_falling_curve_is_fitted_as_its_mean_not_extrapolated_down():
    # Prepare: noise can make a probe's accuracy fall
    x, y = [1, 2, 3], [0.62, 0.60, 0.58]

    # Execute
    fit = fit_curve(x, y, target=100)

    # Assert: the constrained fit (b >= 0) is the flat line at the mean
    assert fit.prediction == pytest.approx(0.60, abs=1e-9)
    assert fit.scale == 0.0


@pytest.mark.parametrize(
    "x, y, target",
    [
        ([1, 2], [0.2, 0.9], 1e6),  # a steep early rise, far ahead
        ([10, 20], [0.05, 0.5], 0.01),  # back before the first point, where the curve goes below zero
    ],
)
def test_prediction_stays_within_zero_and_one(x, y, target):
    # Execute
    fit = fit_curve(x, y, target=target)

    # Assert
    assert 0.0 <= fit.prediction <= 1.0
    assert 0.0 <= fit.asymptote <= 1.0


@pytest.mark.parametrize(
    "x, y, target",
    [
        ([1], [0.5], 10),  # one point
        ([0, 1], [0.5, 0.6], 10),  # progress zero
        ([1, 2], [0.5, 1.2], 10),  # accuracy above one
        ([1, 2], [0.5, float("nan")], 10),  # not a number
        ([1, 2], [0.5, 0.6], 0),  # no target
    ],
)
def test_bad_points_are_refused(x, y, target):
    with pytest.raises(ValueError):
        fit_curve(x, y, target)
