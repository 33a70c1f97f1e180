"""The rounds of a run: one plain round at a time, or a probe stage where one is due.

:meth:`SplitPrefixStrategy.start <strategies.strategy.SplitPrefixStrategy.start>` sets
the run up and writes its summary; :func:`run_rounds` is what happens in between. Each round's
context comes from the probe controller (the mode in use, the policy schedule's stage, the
round's learning rates). A probe stage (:mod:`strategies.probing.stage`, or
:mod:`strategies.probing.parallel` for the parallel variant) may run more than one round and
switch the mode; every round's record goes into the run's history and Flower's ``Result`` as
it ends.
"""

from __future__ import annotations

from logging import ERROR
from typing import Any

from flwr.common.logger import log
from flwr.serverapp.strategy import Result

from strategies.probing import judge as probing
from strategies.probing.parallel import parallel_stage
from strategies.probing.stage import probe_stage
from strategies.round import record as records
from strategies.round.context import Outcome, RoundContext
from strategies.round.host import RoundHost


def run_rounds(host: RoundHost, run: RoundContext, result: Result, history: list[dict[str, Any]]) -> str:
    """Rounds ``host.first_round..run.num_rounds``, probe stages where due; the run's status.

    ``run``: the run's context (its grid, timeout, train config, evaluation); each round's is
    made from it.
    """
    start = probing.figures_of(result.evaluate_metrics_serverapp.get(host.first_round - 1))
    server_round = host.first_round
    while server_round <= run.num_rounds:
        ctx = host.probes.context_for(run, server_round)
        due = host.probes.stage_due(server_round, history)
        parallel = ctx.settings.probe.variant == "parallel"
        outcomes: list[Outcome]
        if due and (server_round < run.num_rounds or parallel) and start:
            outcomes = (parallel_stage if parallel else probe_stage)(host, ctx, start)
        else:
            outcomes = [host.run_round(ctx, host.state)]
        for outcome in outcomes:
            if outcome is None:
                status = f"stopped at round {server_round}: fewer than {ctx.settings.min_clients} valid contributions"
                log(ERROR, "%s; the checkpoint of round %d is kept", status, server_round - 1)
                return status
            state, record = outcome
            history.append(record)
            records.add_to_result(result, record, state)
            start = probing.figures_of(record) or start
            server_round += 1
    return "completed"
