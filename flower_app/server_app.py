"""ServerApp: load the config, build the server's half, run the strategy."""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from flower_app import task
from flower_app.config import load_config, mode_list, to_dict
from strategies.fleet import Policy
from strategies.requirements import TrainingRequirement
from strategies.rundir import RunDirectory
from strategies.split_strategy import SplitPrefixStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, context.run_config)


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> dict:
    """Run a whole job on a grid (Flower's, or the in-process one); return its summary."""
    config = load_config(run_config)
    run_dir = RunDirectory(config.run.run_dir)
    setup = task.build(config)
    server = task.SplitServer(setup)
    t = config.train
    strategy = SplitPrefixStrategy(
        server, seed=config.run.seed, steps=t.steps_per_round, batch_size=t.batch_size, lr=t.lr, head_lr=t.head_lr,
        activation_dtype=t.activation_dtype, min_clients=config.strategy.min_clients,
        fraction_train=config.strategy.fraction_train, timeout_s=config.strategy.timeout_s,
        wait_for_nodes_s=config.strategy.wait_for_nodes_s, server_side=config.strategy.server_side,
        eval_every=config.eval.every, run_dir=run_dir, requirement=requirement(config), policy=policy(config),
        emulator_layers=t.emulator_layers, upload_kind=t.upload_kind, local_eval_size=t.local_eval_size,
        upload_rows=t.upload_rows)
    first_round = 1
    checkpoint = run_dir.load() if config.run.resume else None
    if checkpoint is not None:
        strategy.state = dict(checkpoint.arrays)
        strategy.restore(checkpoint.state)
        first_round = checkpoint.round + 1
        run_dir.truncate_after(checkpoint.round)
        log(INFO, "resuming from the checkpoint of round %d in %s", checkpoint.round, run_dir.path)
    else:
        run_dir.start_fresh()
    run_dir.write_config(OmegaConf.to_yaml(to_dict(config)))
    log(INFO, "run directory: %s (%d trainable tensors, %d values)", run_dir.path.resolve(),
        len(strategy.state), sum(v.size for v in strategy.state.values()))
    return strategy.start(grid, config.run.num_rounds, first_round)


def requirement(config) -> TrainingRequirement:
    """The config's requirement section as the wire-level requirement (0 means no bound)."""
    r = config.requirement
    return TrainingRequirement(min_samples=r.min_samples, target_samples=r.target_samples or None,
                               max_samples=r.max_samples or None, max_train_s=r.max_train_s or None,
                               threshold_metric=r.threshold_metric,
                               threshold_value=None if r.threshold_value < 0 else r.threshold_value)


def policy(config) -> Policy:
    """The config's grouping policy (``strategy.policy`` and its settings)."""
    s = config.strategy
    return Policy(name=s.policy, threshold_flops=s.threshold_flops, weak_mode=s.weak_mode,
                  strong_mode=s.strong_mode, kmeans_modes=mode_list(config, "kmeans-modes"),
                  cost_modes=mode_list(config, "cost-modes"), local_epochs=config.train.local_epochs,
                  batch_size=config.train.batch_size, seed=config.run.seed, server_flops=config.fleet.server_flops)
