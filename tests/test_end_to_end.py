"""Whole runs on the in-process grid (tiny random model, synthetic data)."""

import json

import pytest

from flower_app.apps.runner import run_inprocess


def _run(tmp_path, name, **overrides):
    run_dir = tmp_path / name
    summary = run_inprocess({"config": "test", "run.run-dir": str(run_dir), **overrides}, num_nodes=4)
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, rounds, run_dir


def _assert_fault_free(rounds, num_nodes=4):
    """A run without injected faults: every client works every round, nothing dropped or failed."""
    for record in rounds:
        assert record["dropped"] == {}, (record["round"], record["dropped"])
        assert not any(record["failures"].values()), (record["round"], record["failures"])
        assert record["excluded"] == []
        assert sorted(record["clients"], key=int) == [str(i) for i in range(num_nodes)]


def test_run_leaves_a_complete_run_directory(tmp_path):
    # Execute
    summary, rounds, run_dir = _run(tmp_path, "a")

    # Assert
    assert summary["status"] == "completed" and summary["rounds"] == 4
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "checkpoint.json",
        "checkpoint.npz",
        "summary.json",
    }
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    first = rounds[0]
    assert set(first["clients"]) == {"0", "1", "2", "3"}
    assert all(c["bytes-up"] > 0 and c["bytes-down"] > 0 for c in first["clients"].values())
    assert first["bytes-up"] == sum(c["bytes-up"] for c in first["clients"].values())
    assert 0.0 <= first["accuracy"] <= 1.0 and first["wall-s"] > 0
    _assert_fault_free(rounds)


def test_same_seed_same_metrics_and_training_learns(tmp_path):
    # Execute
    _, first, _ = _run(tmp_path, "a")
    _, second, _ = _run(tmp_path, "b")

    # Assert: identical apart from wall time; the synthetic task is learnt
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall-s"} for r in rs]  # noqa: E731
    assert strip(first) == strip(second)
    _assert_fault_free(first)
    assert first[-1]["accuracy"] >= 0.75
    assert first[-1]["eval-loss"] < first[0]["eval-loss"]


def test_float16_activations_halve_the_split_traffic(tmp_path):
    _, full, _ = _run(tmp_path, "a", **{"run.num-rounds": 1})
    _, half, _ = _run(tmp_path, "b", **{"run.num-rounds": 1, "train.activation-dtype": "float16"})
    _assert_fault_free(full)
    _assert_fault_free(half)
    ratio = half[0]["bytes-up"] / full[0]["bytes-up"]
    assert 0.45 < ratio < 0.6  # activations halve; masks, labels and the prefix do not


def test_a_failing_config_stops_before_training(tmp_path):
    with pytest.raises(ValueError, match="model.split-layer=9"):
        _run(tmp_path, "a", **{"model.split-layer": 9})
