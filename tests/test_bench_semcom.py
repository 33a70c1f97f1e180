"""bench/semcom.py's mean over seeds and its table, on hand-made sweeps (no training)."""

import pytest

from tests.benches import load_bench

semcom = load_bench("semcom")


def _sweep(*rows):
    return [{"snr-db": snr, "in-loop": a, "noiseless-training": b} for snr, a, b in rows]


def test_mean_over_seeds_averages_each_snr_and_keeps_the_in_loop_spread():
    # Prepare: two seeds, two SNRs
    sweeps = [_sweep((0.0, 0.6, 0.2), (10.0, 0.9, 0.5)), _sweep((0.0, 0.8, 0.4), (10.0, 0.7, 0.7))]

    # Execute
    rows = semcom.mean_over_seeds(sweeps)

    # Assert
    assert [r["snr-db"] for r in rows] == [0.0, 10.0]
    assert rows[0]["in-loop"] == pytest.approx(0.7) and rows[0]["noiseless-training"] == pytest.approx(0.3)
    assert (rows[1]["in-loop-min"], rows[1]["in-loop-max"]) == (0.7, 0.9)
    assert "0.70-0.90" in semcom.sweep_table(rows)


def test_mean_over_seeds_refuses_sweeps_of_different_snrs():
    with pytest.raises(ValueError):
        semcom.mean_over_seeds([_sweep((0.0, 0.6, 0.2)), _sweep((0.0, 0.6, 0.2), (5.0, 0.6, 0.2))])
