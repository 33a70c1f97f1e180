"""ServerApp: load the config, build the server's half, run the strategy as a Flower user would."""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from flower_app.config import load_config, split_settings, to_dict
from flower_app.server_model import SplitServer
from flower_app.setup import build
from strategies.records import to_record
from strategies.rundir import RunDirectory
from strategies.split_strategy import SplitPrefixStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, context.run_config)


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run a whole job on a grid (Flower's, or the in-process one); return its summary."""
    config = load_config(run_config)
    settings = split_settings(config)
    server = SplitServer(build(config), settings)
    run_dir = RunDirectory(config.run.run_dir)
    strategy = SplitPrefixStrategy(server, settings, run_dir)
    initial = server.initial_state()
    checkpoint = run_dir.load() if config.run.resume else None
    if checkpoint is not None:
        initial = dict(checkpoint.arrays)
        strategy.resume(checkpoint)
        run_dir.truncate_after(checkpoint.round)
        log(INFO, "resuming from the checkpoint of round %d in %s", checkpoint.round, run_dir.path)
    else:
        run_dir.start_fresh()
    run_dir.write_config(OmegaConf.to_yaml(to_dict(config)))
    log(
        INFO,
        "run directory: %s (%d trainable tensors, %d values)",
        run_dir.path.resolve(),
        len(initial),
        sum(v.size for v in initial.values()),
    )
    strategy.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=config.run.num_rounds,
        timeout=config.strategy.timeout_s,
        evaluate_fn=server.evaluate_fn(config.eval.every, config.run.num_rounds),
    )
    return strategy.summary_record
