"""What a round is run with: one frozen value handed down instead of a list of arguments.

A :class:`RoundContext` says which round it is, in which settings, with which grid, exchange
timeout, caller's train config and evaluation. The strategy makes one per run when it starts,
and :meth:`ProbeController.context_for <strategies.probing.controller.ProbeController.context_for>`
one per round from it; a probe trial or a parallel half is that round's context with other
settings (``dataclasses.replace``). The round code reads everything it needs from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from strategies.settings import SplitSettings

State = dict[str, np.ndarray]  # the global tensors, by name
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
Outcome = tuple[State, dict[str, Any]] | None  # a round's tensors and record; None: too few contributions


@dataclass(frozen=True)
class RoundContext:
    """One round's (or one part of a round's) fixed inputs.

    Parameters
    ----------
    grid : Grid
        Where the round's messages go.
    server_round : int
        The round's number, from 1.
    num_rounds : int
        The run's last round.
    settings : SplitSettings
        The settings the round trains in: the mode in use (a probe trial's or a parallel
        half's mode) at the round's learning rates (:mod:`strategies.round.lr_schedule`).
    timeout : float
        Seconds each exchange may take.
    train_config : ConfigRecord (default: empty)
        The caller's keys, added to every train message's config.
    evaluate_fn : EvaluateFn | None (default: None)
        Evaluates the round's tensors on the server; None: no evaluation.
    seed_round : int | None (default: None)
        The round whose batch plans to draw (a probe's second trial repeats its first's);
        None: this round's own.
    replan : bool (default: False)
        The policy schedule entered a new stage this round: the fleet is planned again.
    """

    grid: Grid
    server_round: int
    num_rounds: int
    settings: SplitSettings
    timeout: float
    train_config: ConfigRecord = field(default_factory=ConfigRecord)
    evaluate_fn: EvaluateFn | None = None
    seed_round: int | None = None
    replan: bool = False
