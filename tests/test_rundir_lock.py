"""One writer per run directory: a second run is refused and names the holder; a stale lock is taken over."""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flower_app.apps.runner import main as runner_main
from flower_app.apps.runner import run_inprocess
from strategies.persist.rundir import LOCK_NAME, RunDirectory, RunDirectoryInUse

ROOT = Path(__file__).resolve().parents[1]

# Takes the lock of argv[1] as a run does, says so, and holds it until killed.
HOLDER = """
import sys, time
from strategies.persist.rundir import RunDirectory
with RunDirectory(sys.argv[1]).lock():
    print("holding", flush=True)
    time.sleep(120)
"""


def _config(run_dir, **overrides):
    return {
        "config": "test",
        "run.num-rounds": 1,
        "train.steps-per-round": 2,
        "run.run-dir": str(run_dir),
        **overrides,
    }


def _holder(run_dir):
    """Another process that holds the lock of ``run_dir`` (kill it when done)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "holding"
    return process


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_run_started_into_a_running_ones_directory_is_refused_and_the_first_is_whole(tmp_path, capsys):
    # Prepare: while run A is in its first round, run B starts into the same directory
    run_dir, second = tmp_path / "same", []

    def start_another_run(index, message, call):
        if not second:
            argv = ["--nodes", "3", *(f"{k}={v}" for k, v in _config(run_dir, **{"train.lr": 0.05}).items())]
            second.append(runner_main(argv))
        return call()

    # Execute
    summary = run_inprocess(_config(run_dir), num_nodes=3, fault=start_another_run)

    # Assert: B exits 2 with one line naming A (this process); A completed, alone, and let go of the lock
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert second == [2]
    assert len(err) == 1 and err[0].startswith(f"error: {run_dir} is in use by another run (pid {os.getpid()} on ")
    assert socket.gethostname() in err[0] and "started 20" in err[0]
    assert summary["status"] == "completed" and summary["rounds"] == 1
    assert [r["round"] for r in RunDirectory(run_dir).rounds()] == [1]
    assert "lr: 0.05" not in (run_dir / "config.yaml").read_text()
    assert not (tmp_path / "same.1").exists() and not (run_dir / LOCK_NAME).exists()


def test_a_lock_held_by_another_process_is_refused_naming_it_and_nothing_moves(tmp_path):
    # Prepare: a finished run's files, and a live process that holds the lock
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    holder = _holder(tmp_path)

    # Execute / Assert
    try:
        in_use = rf"in use by another run \(pid {holder.pid} on .*, started "
        with pytest.raises(RunDirectoryInUse, match=in_use), RunDirectory(tmp_path).lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.jsonl",
        LOCK_NAME,
    ]  # the killed holder left its lock file


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    # Prepare: the lock file of a process that is gone (nobody holds its flock)
    pid = _dead_pid()
    stale = {"pid": pid, "host": socket.gethostname(), "started": "2025-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))

    # Execute
    with caplog.at_level(logging.WARNING), RunDirectory(tmp_path).lock():
        held = json.loads((tmp_path / LOCK_NAME).read_text())

    # Assert: taken over (now names this process), said so, and released at the end
    assert held["pid"] == os.getpid()
    assert f"taking over the lock of pid {pid} on {socket.gethostname()}, started 2025-01-01" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_block_fails_or_is_interrupted(tmp_path):
    # Execute
    for stop in (RuntimeError("failed"), KeyboardInterrupt()):
        with pytest.raises(type(stop)), RunDirectory(tmp_path).lock():
            raise stop

        # Assert: gone, and free for the next run
        assert not (tmp_path / LOCK_NAME).exists()
        with RunDirectory(tmp_path).lock():
            pass


def test_moving_an_old_run_aside_keeps_the_lock_in_the_directory(tmp_path):
    # Prepare
    run_dir = RunDirectory(tmp_path / "run")
    (run_dir.path / "summary.json").write_text('{"status": "completed"}')

    # Execute
    with run_dir.lock():
        aside = run_dir.move_aside()
        lock_stays = (run_dir.path / LOCK_NAME).exists()

    # Assert
    assert aside == tmp_path / "run.1" and (aside / "summary.json").exists()
    assert lock_stays and not (aside / LOCK_NAME).exists()
