"""Every stop says why: SIGTERM, a killed process, a full disk, too few nodes (tiny model, in process)."""

import errno
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from flower_app.apps import runner
from flower_app.apps.runner import main as runner_main
from flower_app.apps.runner import run_inprocess
from flower_app.apps.server_app import Interrupted, simulated_nodes
from flower_app.report.rundata import read_run
from strategies.persist import checkpoint as checkpoint_mod
from strategies.persist import rundir as rundir_mod
from strategies.persist.rundir import LOCK_NAME, PROCESS_GONE, RunDirectory, RunDirectoryFull, reported_status

ROOT = Path(__file__).resolve().parents[1]

# Writes a "running" summary under the lock, as a run does, and waits to be killed.
WRITER = """
import sys, time
from strategies.persist.rundir import RunDirectory
run_dir = RunDirectory(sys.argv[1])
with run_dir.lock():
    run_dir.write_summary({"status": "running", "rounds": 2})
    print("running", flush=True)
    time.sleep(120)
"""


def _args(run_dir, *overrides, nodes=3):
    return ["--nodes", str(nodes), "config=test", "train.steps-per-round=2", f"run.run-dir={run_dir}", *overrides]


class _NotOurHandler(BaseException):
    """Raised by the test's own SIGTERM handler: the run's handler was not in place."""


def test_sigterm_leaves_a_summary_that_says_so_and_lets_go_of_the_run_directory(tmp_path):
    # Prepare: SIGTERM arrives while round 2 trains; outside the run, the test's own handler answers it
    def terminate(index, message, call):
        if message.metadata.group_id == "2":
            os.kill(os.getpid(), signal.SIGTERM)
        return call()

    def not_ours(signum, frame):
        raise _NotOurHandler

    before = signal.signal(signal.SIGTERM, not_ours)
    try:
        # Execute
        config = {"config": "test", "run.num-rounds": 3, "train.steps-per-round": 2, "run.run-dir": str(tmp_path)}
        with pytest.raises(Interrupted, match="SIGTERM"):
            run_inprocess(config, num_nodes=3, fault=terminate)
        restored = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)

    # Assert: the reason, the last round kept, the lock released, the handler given back
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted: SIGTERM" and summary["rounds"] == 1
    assert RunDirectory(tmp_path).load().round == 1
    assert not (tmp_path / LOCK_NAME).exists() and restored is not_ours


def test_the_runner_says_a_sigterm_in_one_line_and_exits_143(tmp_path, monkeypatch, capsys):
    # Prepare
    def terminated(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(runner, "run_inprocess", terminated)

    # Execute
    code = runner_main(_args(tmp_path))

    # Assert
    assert code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "error: run interrupted: SIGTERM\n"


def test_a_running_summary_of_a_killed_process_reads_as_interrupted_process_gone(tmp_path, caplog):
    # Prepare: a writer process under the lock, alive, then SIGKILLed
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "running"
    while_alive = read_run(tmp_path).summary["status"]
    writer.kill()
    writer.wait()

    # Execute: a reader, then the next run that takes the directory (a resume, or a new run)
    read = read_run(tmp_path).summary["status"], reported_status(tmp_path, "running")
    with RunDirectory(tmp_path).lock():
        on_disk = json.loads((tmp_path / "summary.json").read_text())

    # Assert
    assert while_alive == "running"
    assert read == (PROCESS_GONE, PROCESS_GONE) and PROCESS_GONE == "interrupted (process gone)"
    assert on_disk == {"status": PROCESS_GONE, "rounds": 2}
    assert f"taking over the lock of pid {writer.pid}" in caplog.text and PROCESS_GONE in caplog.text


def test_a_full_disk_names_the_file_and_the_last_round_and_summary_and_checkpoint_agree(tmp_path, monkeypatch, capsys):
    # Prepare: the disk fills up while round 2's checkpoint is written
    write_npz, calls = checkpoint_mod._write_npz, []

    def fills_up(handle, arrays):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"half an archive")
            raise OSError(errno.ENOSPC, "No space left on device")
        write_npz(handle, arrays)

    monkeypatch.setattr(checkpoint_mod, "_write_npz", fills_up)

    # Execute
    code = runner_main(_args(tmp_path, "run.num-rounds=3"))

    # Assert: exit 1 with one line naming the file and the round kept
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1
    assert f"no space left on device writing {tmp_path / 'checkpoint.npz'}" in errors[0]
    assert "keeps rounds up to 1" in errors[0]
    # summary, metrics, ledger and checkpoint all stop at round 1; no temporary file holds the space
    run_dir = RunDirectory(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("interrupted: RunDirectoryFull: no space left") and summary["rounds"] == 1
    assert run_dir.load().round == 1 and [r["round"] for r in run_dir.rounds()] == [1]
    assert {r["round"] for r in run_dir.ledger()} == {1}
    assert not list(tmp_path.glob(".checkpoint-*")) and not (tmp_path / LOCK_NAME).exists()


def test_an_append_cut_short_by_a_full_disk_leaves_whole_lines(tmp_path, monkeypatch):
    # Prepare: round 1 on disk, then a write that gets half of round 2 out
    run_dir = RunDirectory(tmp_path)
    run_dir.log_round({"round": 1, "accuracy": 0.5})

    def half_then_full(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir_mod, "_write_all", half_then_full)

    # Execute / Assert
    with pytest.raises(RunDirectoryFull, match=r"metrics\.jsonl: .* keeps rounds up to 0"):
        run_dir.log_round({"round": 2, "accuracy": 0.6})
    # no checkpoint yet: round 1 goes too, and what stays parses
    assert run_dir.rounds() == []


def test_a_checkpoint_that_fills_the_disk_keeps_the_last_one_and_no_temporary_file(tmp_path, monkeypatch):
    # Prepare: round 1 saved; in round 2 the new arrays are written, then the disk is full
    run_dir, arrays = RunDirectory(tmp_path), {"prefix": np.arange(4.0)}
    run_dir.checkpoint(1, arrays, {"round": 1})
    temporary_file, uses = checkpoint_mod._temporary_file, []

    @contextmanager
    def full_after_the_arrays(directory):
        uses.append(directory)
        with temporary_file(directory) as (path, handle):
            if len(uses) == 2:  # the copy of the old record, after the new arrays' file
                raise OSError(errno.ENOSPC, "No space left on device")
            yield path, handle

    monkeypatch.setattr(checkpoint_mod, "_temporary_file", full_after_the_arrays)

    # Execute / Assert
    with pytest.raises(RunDirectoryFull, match=r"checkpoint\.npz: .* keeps rounds up to 1"):
        run_dir.checkpoint(2, {"prefix": np.arange(4.0) + 1}, {"round": 2})
    assert run_dir.load().round == 1 and np.array_equal(run_dir.load().arrays["prefix"], arrays["prefix"])
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_min_clients_above_the_node_count_is_refused_at_start_in_one_line(tmp_path, capsys):
    # Execute (without waiting for nodes: a run that got past the check would fail at once)
    code = runner_main(_args(tmp_path / "run", "strategy.min-clients=3", "strategy.wait-for-nodes-s=0", nodes=2))

    # Assert: both numbers, no traceback, nothing written
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "error: strategy.min-clients=3 is more than the 2 nodes of this run: "
        "lower strategy.min-clients or start more nodes\n"
    )
    assert not (tmp_path / "run").exists()


def test_the_server_app_counts_the_supernodes_of_a_flower_simulation_only():
    # Prepare: Flower's simulation grid with 5 registered SuperNodes; the in-process grid is not one
    from flwr.superlink.grid import InMemoryGrid

    class Simulation(InMemoryGrid):
        def __init__(self, nodes):
            self.nodes = nodes

        def get_node_ids(self):
            return list(range(self.nodes))

    # Execute / Assert: none registered yet counts as unknown (the strategy waits for them)
    assert simulated_nodes(Simulation(5)) == 5 and simulated_nodes(Simulation(0)) is None
    assert simulated_nodes(object()) is None
