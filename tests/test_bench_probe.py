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


def _rounds(accuracies, seconds, final_loss):
    rounds = [{"accuracy": a, "sim-clock-s": s, "eval-loss": 1.0} for a, s in zip(accuracies, seconds, strict=True)]
    rounds[-1]["eval-loss"] = final_loss
    return rounds


def test_the_better_mode_is_the_sooner_one_unless_the_gain_is_a_tie():
    better = load_bench("probe").better
    slow = _rounds([0.6, 0.8], [10.0, 20.0], final_loss=0.40)
    fast = _rounds([0.6, 0.8], [3.0, 6.0], final_loss=0.45)
    same_time_noisier = _rounds([0.6, 0.8], [9.9, 19.8], final_loss=0.45)
    never = _rounds([0.5, 0.6], [1.0, 2.0], final_loss=0.30)

    assert better({"float32": slow, "int4": fast}, 0.75, tie=0.05) == "int4"
    # 1% sooner is within the tie: the lower final loss decides, and that is float32's
    assert better({"float32": slow, "int4": same_time_noisier}, 0.75, tie=0.05) == "float32"
    assert better({"float32": slow, "int4": same_time_noisier}, 0.75, tie=0.0) == "int4"
    # reaching the target beats a lower loss that never gets there
    assert better({"float32": slow, "int4": never}, 0.75, tie=0.05) == "float32"
    assert better({"float32": never, "int4": never}, 0.75) == "float32"


def test_an_earlier_run_is_reused_only_for_the_same_config(tmp_path):
    bench = load_bench("probe")
    config = {"config": "test", "run.num-rounds": 1, "strategy.policy": "split", "run.seed": 3}
    first = bench.run(config, tmp_path / "first", nodes=2)

    # Execute: the same config reads the earlier rounds back (by any path); another seed, or a broken run, trains
    (tmp_path / "x").mkdir()
    again = bench.run(config, tmp_path / "again", nodes=2, reuse=tmp_path / "x" / ".." / "first")
    assert again == first and not (tmp_path / "again").exists()
    assert not bench._same_run({**config, "run.seed": 4}, tmp_path / "first")
    (tmp_path / "first" / "summary.json").write_text("{not json")
    assert not bench._same_run(config, tmp_path / "first")
