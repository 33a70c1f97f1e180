"""bench/probe.py's plumbing: both fleets, a decision per run, figures for each mode."""

import json

import pytest

from tests.benches import load_bench


@pytest.mark.slow
def test_probe_bench_decides_on_both_fleets(tmp_path):
    # Prepare
    bench = load_bench("probe")

    # Execute
    assert bench.main(["--seeds", "0", "--rounds", "3", "--nodes", "3", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())

    # Assert: int8 sends about a quarter of float32's bytes up on both fleets, and each run decided
    assert [r["fleet"] for r in rows] == ["narrow-uplink", "wide-uplink"]
    for row in rows:
        assert row["decision"] in ("float32", "int8") and row["better"] in ("float32", "int8")
        assert row["uplink-mb"]["int8"] < 0.35 * row["uplink-mb"]["float32"]
    # narrow uplinks: int8's round is faster, so its convergence rate is higher
    assert rows[0]["rate"]["int8"] > rows[0]["rate"]["float32"]
