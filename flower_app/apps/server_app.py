"""ServerApp: load the config, build the server's half, run the strategy as a Flower user would.

Every stop says why. A run holds its run directory's lock from before its first write to its
end (:meth:`~strategies.persist.rundir.RunDirectory.lock`); SIGTERM stops it like Ctrl-C, and
its ``summary.json`` then says ``interrupted: SIGTERM``; a ``strategy.min-clients`` above the
nodes of a simulation is refused before anything is built.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from logging import INFO, WARNING
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from flower_app.config.load import load_config, to_dict
from flower_app.config.schema import Config
from flower_app.config.strategy_settings import split_settings
from flower_app.data.setup import build
from flower_app.tasks.family import ServerHalf
from flower_app.tasks.registry import family_of
from strategies.persist.checkpoint import Checkpoint
from strategies.persist.rundir import RunDirectory, RunDirectoryError
from strategies.settings import SplitSettings
from strategies.strategy import SplitPrefixStrategy
from strategies.wire.records import to_record

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    summary = run_server(grid, context.run_config, num_nodes=simulated_nodes(grid))
    if summary["status"] != "completed":  # Flower then marks the run failed: `flwr ls` and our scripts see it
        raise RunStopped(summary["status"])


class RunStopped(RuntimeError):
    """The run ended before its last round (too few valid contributions); the checkpoint is kept."""


class TooFewNodes(ValueError):
    """``strategy.min-clients`` is more than the nodes the run has; the message names both."""


class Interrupted(BaseException):
    """A signal stopped the run; ``str()`` is the signal's name.

    A ``BaseException``, like ``KeyboardInterrupt``: a handler that turns a client's exception
    into a failed reply must not swallow it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_server(grid: Grid, run_config: Mapping[str, Any], num_nodes: int | None = None) -> dict[str, Any]:
    """Run a whole job on a grid (Flower's, or the in-process one); return its summary.

    ``num_nodes`` is the nodes the run has when that is known at its start (a simulation; None:
    nodes may join later). The run directory is locked for the run (refused with
    :class:`~strategies.persist.rundir.RunDirectoryInUse` while another run writes there).

    Raises
    ------
    TooFewNodes
        ``strategy.min-clients`` is more than ``num_nodes``: nothing is built or written.
    Interrupted
        SIGTERM (in the main thread); ``summary.json`` says ``interrupted: SIGTERM``.
    """
    config = load_config(run_config)
    check_nodes(config.strategy.min_clients, num_nodes)
    run_dir = RunDirectory(config.run.run_dir)
    with stop_on_sigterm(), run_dir.lock():
        return _run_job(grid, config, run_dir)


def check_nodes(min_clients: int, num_nodes: int | None) -> None:
    """Refuse a ``strategy.min-clients`` that the run's ``num_nodes`` can never reach (None: unknown)."""
    if num_nodes is not None and min_clients > num_nodes:
        raise TooFewNodes(
            f"strategy.min-clients={min_clients} is more than the {num_nodes} nodes of this run: "
            "lower strategy.min-clients or start more nodes"
        )


def simulated_nodes(grid: Grid) -> int | None:
    """The SuperNodes of a Flower simulation (an ``InMemoryGrid``: all are registered as the run starts);
    None under a deployment, where nodes come and go, or when none is registered yet."""
    simulation = sys.modules.get("flwr.superlink.grid")  # imported only where the grid is one of its kinds
    if simulation is None or not isinstance(grid, simulation.InMemoryGrid):
        return None
    return len(list(grid.get_node_ids())) or None


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Interrupted`; the previous handler comes back after.

    Python runs handlers in the main thread only: elsewhere (Flower's simulation runs the
    ServerApp in a thread) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_job(grid: Grid, config: Config, run_dir: RunDirectory) -> dict[str, Any]:
    settings = split_settings(config)
    server = server_model(config, settings)
    strategy = SplitPrefixStrategy(server, settings, run_dir)
    initial = server.initial_state()
    fingerprint = job_fingerprint(config, initial)
    if config.run.resume:
        checkpoint = _checkpoint_to_resume(run_dir, fingerprint)
        initial = dict(checkpoint.arrays)
        strategy.resume(checkpoint)
        run_dir.truncate_after(checkpoint.round)
        log(INFO, "resuming from the checkpoint of round %d in %s", checkpoint.round, run_dir.path)
    else:
        if run_dir.has_results():  # never delete another run's results
            aside = run_dir.move_aside()
            log(
                WARNING,
                "%s held an earlier run: moved to %s (run.resume=true continues a run instead)",
                run_dir.path,
                aside,
            )
        run_dir.write_fingerprint(fingerprint)
    run_dir.write_config(OmegaConf.to_yaml(to_dict(config)))
    if not run_dir.path.is_absolute():  # under a SuperLink this is the SuperLink's folder, not the user's
        log(
            WARNING,
            "run.run-dir '%s' is relative: taken from this ServerApp's working directory %s",
            config.run.run_dir,
            Path.cwd(),
        )
    log(
        INFO,
        "run directory: %s (%d trainable tensors, %d values; held-out %s)",
        run_dir.path.resolve(),
        len(initial),
        sum(v.size for v in initial.values()),
        ", ".join(family_of(config).metrics(config)),
    )
    try:
        strategy.start(
            grid=grid,
            initial_arrays=to_record(initial),
            num_rounds=config.run.num_rounds,
            timeout=config.strategy.timeout_s,
            evaluate_fn=server.evaluate_fn(config.eval.every, config.run.num_rounds),
        )
    except Interrupted as stop:
        if strategy.summary_record:  # the strategy's summary says "interrupted: Interrupted: SIGTERM"
            run_dir.write_summary({**strategy.summary_record, "status": f"interrupted: {stop}"})
        raise
    return strategy.summary_record


def server_model(config: Config, settings: SplitSettings) -> ServerHalf:
    """The server's half of the job's task family, as the strategy reaches it."""
    return family_of(config).server_model(build(config), settings)


def job_fingerprint(config: Config, initial: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: model, split, prefix, data, seed, tensors.

    A task family adds the config sections of its own (the image task: ``image``).
    """
    sections = to_dict(config)
    data = {k: v for k, v in sections["data"].items() if k != "num-partitions"}  # simulation sets it per run
    return {
        "model": {k: v for k, v in sections["model"].items() if k != "allow-download"},
        "data": data,
        **{key: sections[key] for key in family_of(config).resume_keys},
        "seed": config.run.seed,
        "tensors": {name: list(array.shape) for name, array in sorted(initial.items())},
    }


def _checkpoint_to_resume(run_dir: RunDirectory, fingerprint: Mapping[str, Any]) -> Checkpoint:
    """The run directory's checkpoint, if it exists and belongs to the same job; else a clear error."""
    checkpoint = run_dir.load()
    if checkpoint is None:
        raise RunDirectoryError(
            f"run.resume=true but {run_dir.path} holds no checkpoint: start without run.resume, "
            "or point run.run-dir at the run to continue"
        )
    stored = run_dir.fingerprint()
    now, then = _flatten(json.loads(json.dumps(fingerprint))), _flatten(stored or {})
    changed = sorted(key for key in now.keys() | then.keys() if now.get(key) != then.get(key))
    if stored is not None and changed:
        raise RunDirectoryError(
            f"run.resume=true but {run_dir.path} holds a run of another job (changed: {', '.join(changed[:6])}); "
            "resume with the same model, data and seed, or start a new run.run-dir"
        )
    return checkpoint


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
