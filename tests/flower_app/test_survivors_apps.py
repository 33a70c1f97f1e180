"""A resumed run must be the same job: another run.seed is refused, by name (no model is built)."""

import numpy as np
import pytest

from flower_app.apps.server_app import _checkpoint_to_resume, job_fingerprint
from flower_app.config.load import load_config
from strategies.persist.checkpoint import save_checkpoint
from strategies.persist.rundir import RunDirectory, RunDirectoryError

INITIAL = {"prefix.0": np.zeros((2, 4, 4, 16), np.float32), "head.weight": np.zeros((2, 64), np.float32)}


def _stopped_run(tmp_path, seed):
    """A run directory as a run of ``config=test`` with ``run.seed=seed`` leaves it after round 1."""
    run_dir = RunDirectory(tmp_path)
    run_dir.write_fingerprint(job_fingerprint(load_config({"config": "test", "run.seed": seed}), INITIAL))
    save_checkpoint(run_dir.path, 1, INITIAL, {})
    return run_dir


def test_resuming_with_another_seed_is_refused_naming_seed(tmp_path):
    # Prepare
    run_dir = _stopped_run(tmp_path, seed=0)
    other = job_fingerprint(load_config({"config": "test", "run.seed": 1, "run.resume": True}), INITIAL)

    # Execute / Assert
    with pytest.raises(RunDirectoryError, match=r"changed: seed\)"):
        _checkpoint_to_resume(run_dir, other)


def test_resuming_with_the_same_seed_gives_the_checkpoint(tmp_path):
    # Prepare
    run_dir = _stopped_run(tmp_path, seed=0)
    same = job_fingerprint(load_config({"config": "test", "run.seed": 0, "run.resume": True}), INITIAL)

    # Execute
    checkpoint = _checkpoint_to_resume(run_dir, same)

    # Assert
    assert checkpoint.round == 1 and sorted(checkpoint.arrays) == sorted(INITIAL)
