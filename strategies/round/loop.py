"""The rounds of a run: one plain round at a time, or a probe stage where one is due.

:meth:`SplitPrefixStrategy.start <strategies.strategy.SplitPrefixStrategy.start>` sets
the run up and writes its summary; :func:`run_rounds` is what happens in between. A probe
stage (:mod:`strategies.probing.stage`, or :mod:`strategies.probing.parallel` for the parallel
variant) may run more than one round and switch the mode; every round's record goes into
the run's history and Flower's ``Result`` as it ends.
"""

from __future__ import annotations

from logging import ERROR
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from strategies.probing import judge as probing
from strategies.probing.parallel import parallel_stage
from strategies.probing.stage import probe_stage
from strategies.round import record as records

if TYPE_CHECKING:
    from strategies.strategy import EvaluateFn, SplitPrefixStrategy


def run_rounds(
    strategy: SplitPrefixStrategy,
    grid: Grid,
    result: Result,
    history: list[dict[str, Any]],
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord | None,
    evaluate_fn: EvaluateFn | None,
) -> str:
    """Rounds ``strategy.first_round..num_rounds``, probe stages where due; the run's status."""
    start = probing.figures_of(result.evaluate_metrics_serverapp.get(strategy.first_round - 1))
    server_round = strategy.first_round
    while server_round <= num_rounds:
        args = (grid, num_rounds, timeout, train_config, evaluate_fn)
        s = strategy.settings  # a probe may have switched the mode
        probe = probing.stage_due(s.probe, server_round, history, strategy.probed, strategy.mode)
        parallel = s.probe.variant == "parallel"
        if probe and (server_round < num_rounds or parallel) and start:
            outcomes = (parallel_stage if parallel else probe_stage)(strategy, server_round, start, *args)
        else:
            outcomes = [strategy.run_round(grid, strategy.state, server_round, *args[1:])]
        for outcome in outcomes:
            if outcome is None:
                status = f"stopped at round {server_round}: fewer than {s.min_clients} valid contributions"
                log(ERROR, "%s; the checkpoint of round %d is kept", status, server_round - 1)
                return status
            strategy.state, record = outcome
            history.append(record)
            records.add_to_result(result, record, strategy.state)
            start = probing.figures_of(record) or start
            server_round += 1
    return "completed"
