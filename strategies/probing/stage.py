"""A probe stage as the strategy runs it: two trial rounds, the decision, the hot switch.

The judging is pure (:mod:`strategies.probing.judge`); this is the part with side effects: it
swaps the strategy's settings for each trial, runs its rounds, and leaves the strategy in
the winning mode with the winner's tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from strategies.probing import judge as probing
from strategies.probing.modes import apply_mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from strategies.strategy import SplitPrefixStrategy

State = dict[str, np.ndarray]


def probe_stage(
    strategy: SplitPrefixStrategy,
    server_round: int,
    start: Mapping[str, float],
    grid: Grid,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord | None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
) -> list[tuple[dict[str, np.ndarray], dict[str, Any]] | None]:
    """Two rounds from the same tensors, optimized then basic; keep the better mode's tensors and mode."""
    plan, origin = strategy.settings.probe, strategy.state
    basic = strategy.basic_settings
    optimized = apply_mode(basic, plan.optimized)  # strategies.probing.modes: a dtype, topk:F or plan:M
    strategy.probed.append(strategy.mode)
    strategy.settings, args = optimized, (num_rounds, timeout, train_config, evaluate_fn)
    first = strategy.run_round(grid, origin, server_round, *args, settle=probing.mark(plan.optimized))
    strategy.settings, strategy.mode = basic, strategy.basic_dtype
    if first is None:
        return [None]

    def settle(record: dict[str, Any], state: State) -> tuple[dict[str, Any], State]:
        chosen, extra = probing.judge(start, first[1], record, plan.optimized, strategy.basic_dtype, plan)
        strategy.settings, strategy.mode = optimized if chosen == plan.optimized else basic, chosen
        strategy.decisions.append({"round": server_round, **extra})
        log(INFO, "probe at rounds %d-%d: %s", server_round, server_round + 1, probing.describe(extra))
        entry = {"trial": strategy.basic_dtype, "variant": "sequential", **extra}
        return {"probe": entry}, first[0] if chosen == plan.optimized else state

    # The same batch plans as the first trial: the two differ in their mode, not their data.
    return [first, strategy.run_round(grid, origin, server_round + 1, *args, settle=settle, seed_round=server_round)]
