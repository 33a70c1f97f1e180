"""Tests for the run history (append only, broken lines skipped) and the ridge regressor."""

import logging

import numpy as np
import pytest

from strategies.selection.performance_model import HistoryRun, append_run, fit_regressor, read_history
from strategies.selection.zero_cost import linear_probe_accuracy


def _run(i, accuracy, **features):
    return HistoryRun("task", f"c{i}", {k: float(v) for k, v in features.items()}, accuracy)


def test_history_appends_one_line_per_run_and_reads_them_back(tmp_path):
    # Prepare
    path = tmp_path / "sub" / "history.jsonl"
    runs = [_run(0, 0.7, lr=-2.0), _run(1, 0.8, lr=-1.5)]

    # Execute
    for run in runs:
        append_run(path, run)

    # Assert
    assert len(path.read_text().splitlines()) == 2
    assert read_history(path) == runs


def test_history_skips_a_broken_line_with_a_warning(tmp_path, caplog):
    # Prepare: a run killed mid-write, a hand edit, an accuracy out of range, then a good run
    path = tmp_path / "history.jsonl"
    append_run(path, _run(0, 0.7, lr=-2.0))
    with open(path, "a") as handle:
        handle.write('{"task": "task", "candidate": "c1", "feat\n')
        handle.write("not json at all\n")
        handle.write('{"task": "t", "candidate": "c", "features": {}, "final_accuracy": 7}\n')
    append_run(path, _run(3, 0.8, lr=-1.0))

    # Execute
    with caplog.at_level(logging.WARNING):
        runs = read_history(path)

    # Assert
    assert [r.candidate for r in runs] == ["c0", "c3"]
    assert sum("skipped" in r.message for r in caplog.records) == 3


def test_missing_history_is_empty(tmp_path):
    assert read_history(tmp_path / "none.jsonl") == []


def test_regressor_waits_for_enough_runs():
    # Prepare: seven runs, eight needed
    runs = [_run(i, 0.5 + 0.01 * i, probe=0.5 + 0.01 * i) for i in range(7)]

    # Execute / Assert
    assert fit_regressor(runs, ["probe"], min_runs=8) is None
    assert fit_regressor(runs, ["probe"], min_runs=7) is not None


def test_regressor_learns_a_linear_relation_from_the_history():
    # Prepare: final accuracy = 0.3 + 0.6 * probe accuracy, exactly; a constant feature too
    rng = np.random.default_rng(0)
    probes = rng.uniform(0.5, 0.8, 20)
    runs = [_run(i, 0.3 + 0.6 * p, probe=p, mode=1.0) for i, p in enumerate(probes)]

    # Execute
    model = fit_regressor(runs, ["probe", "mode"], min_runs=8)

    # Assert: close to the line despite the ridge penalty, with a small LOO error
    assert model is not None
    mean, std = model.predict({"probe": 0.65, "mode": 1.0})
    assert mean == pytest.approx(0.3 + 0.6 * 0.65, abs=0.01)
    assert std < 0.02


def test_regressor_ignores_runs_without_its_features():
    # Prepare: eight runs with a probe figure, three without
    runs = [_run(i, 0.6, probe=0.6) for i in range(8)] + [_run(9 + i, 0.9, lr=-2.0) for i in range(3)]

    # Execute
    model = fit_regressor(runs, ["probe"], min_runs=8)

    # Assert
    assert model is not None and model.runs == 8
    with pytest.raises(ValueError, match="probe"):
        model.predict({"lr": -2.0})


def test_linear_probe_separates_separable_features_and_not_noise():
    # Prepare: two classes along the first feature, and a copy with shuffled labels
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = rng.normal(0, 1, (400, 8))
    x[:, 0] += 3.0 * (2 * y - 1)

    # Execute
    separable = linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:], 2)
    noise = linear_probe_accuracy(x[:300], rng.permutation(y[:300]), x[300:], y[300:], 2)

    # Assert
    assert separable > 0.95
    assert noise < 0.7
