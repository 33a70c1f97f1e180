"""No run loses data; every stop or failure says why and exits non-zero (tiny model, in process)."""

import json

import numpy as np
import pytest

from flower_app.apps.runner import main as runner_main
from flower_app.apps.runner import run_inprocess
from strategies.persist.rundir import RunDirectory, RunDirectoryError


def _run(run_dir, fault=None, nodes=3, **overrides):
    config = {"config": "test", "run.num-rounds": 1, "run.run-dir": str(run_dir), **overrides}
    return run_inprocess(config, num_nodes=nodes, fault=fault)


def test_a_new_run_into_a_used_directory_moves_the_old_run_aside(tmp_path):
    # Prepare
    run_dir = tmp_path / "run"
    _run(run_dir, **{"train.lr": 0.02})
    before = (run_dir / "metrics.jsonl").read_text()

    # Execute
    _run(run_dir, **{"train.lr": 0.05})

    # Assert: the first run is whole in run.1, the second in run
    assert (tmp_path / "run.1" / "metrics.jsonl").read_text() == before
    assert (tmp_path / "run.1" / "checkpoint.json").exists()
    assert (run_dir / "metrics.jsonl").read_text() != before


def test_resume_without_a_checkpoint_is_refused_and_deletes_nothing(tmp_path):
    # Prepare: a directory with someone's file and no checkpoint
    (tmp_path / "notes.txt").write_text("keep me")

    # Execute / Assert
    with pytest.raises(RunDirectoryError, match="holds no checkpoint"):
        _run(tmp_path, **{"run.resume": True})
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_resume_with_another_model_shape_is_refused_and_names_what_changed(tmp_path):
    # Prepare
    _run(tmp_path)
    metrics = (tmp_path / "metrics.jsonl").read_text()

    # Execute / Assert
    with pytest.raises(RunDirectoryError, match="model.prefix-length"):
        _run(tmp_path, **{"run.resume": True, "model.prefix-length": 8, "run.num-rounds": 2})
    assert (tmp_path / "metrics.jsonl").read_text() == metrics


def test_a_killed_run_leaves_a_summary_that_says_so(tmp_path):
    # Prepare: a completed run of 1 round, then a resumed one killed in round 2
    _run(tmp_path)

    def kill(index, message, call):
        if message.metadata.group_id == "2":
            raise KeyboardInterrupt
        return call()

    # Execute
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, fault=kill, **{"run.resume": True, "run.num-rounds": 3})

    # Assert: not the old "completed"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("interrupted: KeyboardInterrupt") and summary["rounds"] == 1


def test_a_truncated_pool_file_is_named_in_the_error(tmp_path):
    # Prepare
    (tmp_path / "pool.npz").write_bytes(b"PK\x03\x04 not a zip")

    # Execute / Assert
    with pytest.raises(RunDirectoryError, match="pool.npz"):
        RunDirectory(tmp_path).load_pool()


def test_the_summary_is_valid_json_even_with_a_nan_loss(tmp_path):
    RunDirectory(tmp_path).write_summary({"final-eval-loss": float("nan"), "rounds": 1})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"final-eval-loss": None, "rounds": 1}


def test_the_runner_exits_1_when_the_run_stops_and_2_on_a_bad_config(tmp_path, capsys):
    # Execute
    stopped = runner_main(
        ["--nodes", "3", "config=test", f"run.run-dir={tmp_path / 'a'}", "requirement.max-train-s=1e-6"]
    )
    bad = runner_main(["--nodes", "3", "config=test", f"run.run-dir={tmp_path / 'b'}", "train.lrr=0.1"])

    # Assert
    assert stopped == 1 and bad == 2
    err = capsys.readouterr().err
    assert "error: run stopped at round 1" in err
    assert "error: unknown config key 'train.lrr' (did you mean 'train.lr'?)" in err
    assert "Traceback" not in err


def test_an_honest_resume_still_continues_where_it_stopped(tmp_path):
    # Prepare / Execute: 1 round, then resume to 2
    _run(tmp_path)
    summary = _run(tmp_path, **{"run.resume": True, "run.num-rounds": 2})

    # Assert
    assert summary["status"] == "completed" and summary["rounds"] == 2
    assert np.isfinite(summary["final-accuracy"])
