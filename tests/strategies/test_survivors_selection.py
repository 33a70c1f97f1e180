"""Selection: a user's limits win over the device's defaults; the LOO error equals brute-force refits."""

import numpy as np
import pytest

from strategies.fleet.devices import DeviceProfile
from strategies.selection.performance_model import RIDGE, HistoryRun, fit_regressor
from strategies.selection.rank import Limits, limits_for

PHONE = DeviceProfile(cpu_hz_max=1.5e9, memory_bytes=1e9, energy_budget_j=40.0, bandwidth_hz=3e6, channel_gain=1e-11)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"memory_bytes": 5e8, "energy_j": 10.0}, Limits(memory_bytes=5e8, energy_j=10.0)),  # tighter
        ({"memory_bytes": 4e9, "energy_j": 90.0}, Limits(memory_bytes=4e9, energy_j=90.0)),  # looser
        ({"memory_bytes": None, "energy_j": 7.0}, Limits(memory_bytes=1e9, energy_j=7.0)),  # None: the device's
    ],
)
def test_a_users_memory_and_energy_limits_are_kept(given, expected):
    assert limits_for(PHONE, given) == expected


def _brute_force_loo_rmse(x, y):
    """Refit without each run in turn (the same standardised design, an unpenalised intercept)."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    design = np.hstack([np.ones((len(y), 1)), (x - mean) / scale])  # (n, 1 + features)
    penalty = RIDGE * np.diag([0.0] + [1.0] * x.shape[1])
    errors = []
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        beta = np.linalg.solve(design[rest].T @ design[rest] + penalty, design[rest].T @ y[rest])
        errors.append(y[i] - design[i] @ beta)
    return float(np.sqrt(np.mean(np.square(errors))))


def test_the_loo_rmse_equals_brute_force_refits():
    # Prepare: ten runs, two noisy features
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 1.0, (10, 2))
    y = np.clip(0.4 + 0.3 * x[:, 0] - 0.1 * x[:, 1] + rng.normal(0, 0.03, 10), 0, 1)
    runs = [HistoryRun("task", f"c{i}", {"a": x[i, 0], "b": x[i, 1]}, float(y[i])) for i in range(10)]

    # Execute
    model = fit_regressor(runs, ["a", "b"], min_runs=8)

    # Assert
    assert model is not None
    assert model.loo_rmse == pytest.approx(_brute_force_loo_rmse(x, y), rel=1e-9)
