"""A sequential probe stage: two trial rounds from the same tensors, then the decision.

The judging is pure (:mod:`strategies.probing.judge`); this runs the trials through the
strategy's round steps (:class:`~strategies.round.host.RoundHost`). The first trial trains
in the optimized mode, the second in the basic one, both from the tensors the stage started
from and on the same batch plans. The second trial's round closes with the
:class:`~strategies.probing.judge.Decision` and the winner's tensors, which the strategy
keeps; the run goes on in the winning mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from logging import INFO
from typing import Any

from flwr.common.logger import log

from strategies.probing import judge as probing
from strategies.probing.judge import Decision, Settled
from strategies.round.context import Outcome, RoundContext, State
from strategies.round.host import RoundHost


def probe_stage(host: RoundHost, ctx: RoundContext, start: Mapping[str, float]) -> list[Outcome]:
    """Rounds ``ctx.server_round`` (optimized) and the next (basic), from ``host.state``.

    ``start``: the held-out figures the trials are measured from. A first trial with too few
    contributions ends the stage (and the run) before the second.
    """
    probes, origin = host.probes, host.state
    plan, basic = ctx.settings.probe, probes.basic_mode
    probes.begin_stage()
    # the optimized mode is applied to the basic settings: a dtype, topk:F or plan:M
    trial = replace(ctx, settings=probes.round_settings(ctx.server_round, ctx.num_rounds, plan.optimized))
    first = host.run_round(trial, origin, settle=probing.mark(plan.optimized))
    if first is None:
        return [None]
    first_state, first_record = first

    def settle(record: dict[str, Any], state: State) -> Settled:
        chosen, figures = probing.judge(start, first_record, record, plan.optimized, basic, plan)
        log(INFO, "probe at rounds %d-%d: %s", trial.server_round, second.server_round, probing.describe(figures))
        entry = {"trial": basic, "variant": "sequential", **figures}
        kept = first_state if chosen == plan.optimized else state
        return Settled({"probe": entry}, kept, Decision(trial.server_round, chosen, figures))

    # The same batch plans as the first trial: the two differ in their mode, not their data.
    second = probes.context_for(ctx, ctx.server_round + 1, mode=basic, seed_round=ctx.server_round)
    return [first, host.run_round(second, origin, settle=settle)]
