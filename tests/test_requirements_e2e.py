"""Training requirements end to end: failure causes reach the server and its policy."""

import json

from flower_app.apps.runner import run_inprocess


def _rounds(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_clients_with_too_few_samples_fail_with_their_figures_and_are_excluded(tmp_path):
    # Prepare: 6 clients; Dirichlet skew leaves some holding fewer samples than required
    config = {
        "config": "test",
        "run.num-rounds": 2,
        "run.run-dir": str(tmp_path),
        "data.partitioner": "dirichlet",
        "data.alpha": 0.3,
        "requirement.min-samples": 30,
    }

    # Execute
    summary = run_inprocess(config, num_nodes=6)

    # Assert
    first, second = _rounds(tmp_path)
    assert summary["status"] == "completed"
    short = first["failures"]["insufficient-samples"]
    assert 0 < short < 6
    reasons = [why for why in first["dropped"].values() if why.startswith("insufficient-samples")]
    assert len(reasons) == short and all("at least 30 needed" in why for why in reasons)
    assert len(first["excluded"]) == short  # the policy: no samples, no split
    assert set(second["clients"]).isdisjoint(first["excluded"])  # not asked again
    assert second["failures"]["insufficient-samples"] == 0


def test_an_unmeetable_time_limit_stops_the_run_cleanly(tmp_path):
    # Prepare: no client can train 10 steps in a microsecond
    config = {"config": "test", "run.run-dir": str(tmp_path), "requirement.max-train-s": 1e-6}

    # Execute
    summary = run_inprocess(config, num_nodes=4)

    # Assert
    assert summary["status"].startswith("stopped at round 1")
    assert summary["rounds"] == 0
    assert not (tmp_path / "checkpoint.json").exists()  # nothing completed, nothing to resume
