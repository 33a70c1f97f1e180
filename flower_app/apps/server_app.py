"""ServerApp: load the config, build the server's half, run the strategy as a Flower user would."""

from __future__ import annotations

import json
from collections.abc import Mapping
from logging import INFO, WARNING
from pathlib import Path
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
    summary = run_server(grid, context.run_config)
    if summary["status"] != "completed":  # Flower then marks the run failed: `flwr ls` and our scripts see it
        raise RunStopped(summary["status"])


class RunStopped(RuntimeError):
    """The run ended before its last round (too few valid contributions); the checkpoint is kept."""


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run a whole job on a grid (Flower's, or the in-process one); return its summary."""
    config = load_config(run_config)
    settings = split_settings(config)
    server = server_model(config, settings)
    run_dir = RunDirectory(config.run.run_dir)
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
    strategy.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=config.run.num_rounds,
        timeout=config.strategy.timeout_s,
        evaluate_fn=server.evaluate_fn(config.eval.every, config.run.num_rounds),
    )
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
